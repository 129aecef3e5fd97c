//! Configuration: every environment variable is read and validated here, once, into plain structs.
//!
//! All problems are collected and reported together; nothing else in the program reads the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{self, TlsMaterial};

/// Where a gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// The `host:port` target gRPC dials (IPv6 literals are bracketed).
    pub fn target(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.target())
    }
}

/// An inclusive latency band `min-max` (milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// Lowest latency in the band.
    pub min: u32,
    /// Highest latency in the band.
    pub max: u32,
}

/// How to reach the Open Match backend and which match function it should call.
#[derive(Debug)]
pub struct OpenMatchConfig {
    /// The backend service.
    pub backend: Endpoint,
    /// The match function Open Match calls (sent in `FunctionConfig`).
    pub match_function: Endpoint,
    /// TLS to the backend; `None` means plaintext.
    pub tls: Option<TlsMaterial>,
}

/// How to reach the Agones allocator and what to ask it for.
#[derive(Clone, Debug)]
pub struct AgonesConfig {
    /// The allocator service.
    pub allocator: Endpoint,
    /// mTLS material (CA and client identity are both required).
    pub tls: TlsMaterial,
    /// Name to verify the allocator's certificate against, when it differs from the dial address.
    pub tls_server_name: Option<String>,
    /// `AllocationRequest.namespace`.
    pub namespace: String,
    /// `AllocationRequest.multiClusterSetting.enabled`.
    pub multicluster: bool,
    /// Label key whose value selects the region's game servers.
    pub region_label: String,
    /// Name of the game server port that goes into the connection string.
    pub port_name: String,
}

/// Which profiles to fetch matches for.
#[derive(Debug)]
pub struct ProfileConfig {
    /// One set of profiles per region.
    pub regions: Vec<String>,
    /// One profile per region × band.
    pub bands: Vec<Band>,
    /// Tag every profile's pool requires.
    pub tag: String,
}

/// Intervals, deadlines and budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between fetches of one profile.
    pub interval: Duration,
    /// Deadline of one FetchMatches call.
    pub fetch_timeout: Duration,
    /// Deadline of one Allocate attempt.
    pub allocate_timeout: Duration,
    /// Deadline of one AssignTickets or ReleaseTickets attempt.
    pub assign_timeout: Duration,
    /// Total time one match may spend retrying Allocate.
    pub allocate_retry_budget: Duration,
    /// Total time one match may spend retrying AssignTickets.
    pub assign_retry_budget: Duration,
    /// Time from SIGTERM until queued matches are released and the process exits.
    pub shutdown_timeout: Duration,
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Open Match side.
    pub openmatch: OpenMatchConfig,
    /// Agones side.
    pub agones: AgonesConfig,
    /// Profiles to fetch.
    pub profiles: ProfileConfig,
    /// Deadlines and intervals.
    pub timing: Timing,
    /// Number of allocator worker threads.
    pub allocator_threads: usize,
    /// Bound of the match queue between fetchers and workers.
    pub queue_capacity: usize,
    /// Things worth a warning at start-up (deprecated variable names).
    pub warnings: Vec<String>,
}

/// Every configuration problem found, one line each, each naming its variable.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Old variable names of the Go director that are still accepted, with the name that replaced them.
pub const LEGACY_ALIASES: &[(&str, &str)] = &[
    ("NAMESPACE", "AGONES_NAMESPACE"),
    ("CRT_FILE", "AGONES_CLIENT_CERT"),
    ("KEY_FILE", "AGONES_CLIENT_KEY"),
    ("CA_FILE", "AGONES_CA_CERT"),
];

/// Reads variables through a lookup function and collects problems.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Reader<'_> {
    /// The raw value of `name`, falling back to the Go director's old name for it.
    fn raw(&mut self, name: &str) -> Option<String> {
        if let Some(value) = (self.lookup)(name) {
            return Some(value);
        }
        let (old, _) = LEGACY_ALIASES.iter().find(|(_, new)| *new == name)?;
        let value = (self.lookup)(old)?;
        self.warnings
            .push(format!("{old} is deprecated: set {name} instead"));
        Some(value)
    }

    /// The value of `name`, or `default` when unset; an empty value is a problem.
    fn string(&mut self, name: &str, default: &str) -> String {
        match self.raw(name) {
            None => default.to_string(),
            Some(value) if value.trim().is_empty() => {
                self.problem(name, "is empty");
                default.to_string()
            }
            Some(value) => value.trim().to_string(),
        }
    }

    /// The value of an optional variable; unset and empty both mean "not given".
    fn optional(&mut self, name: &str) -> Option<String> {
        self.raw(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parsed<T>(
        &mut self,
        name: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(name, default);
        match parse(&text) {
            Ok(value) => Some(value),
            Err(why) => {
                self.problem(name, &format!("{why} (got {text:?})"));
                None
            }
        }
    }

    fn problem(&mut self, name: &str, what: &str) {
        self.problems.push(format!("{name}: {what}"));
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (variable name → value).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let openmatch = read_openmatch(&mut r);
        let agones = read_agones(&mut r);
        let profiles = read_profiles(&mut r);
        let timing = read_timing(&mut r);
        let allocator_threads = r.parsed("ALLOCATOR_THREADS", "8", |s| count(s, 1, 1024));
        let queue_capacity = r.parsed("QUEUE_CAPACITY", "64", |s| count(s, 1, 1_000_000));
        if !r.problems.is_empty() {
            return Err(ConfigErrors(r.problems));
        }
        Ok(Config {
            openmatch: openmatch.expect("no problems recorded"),
            agones: agones.expect("no problems recorded"),
            profiles,
            timing: timing.expect("no problems recorded"),
            allocator_threads: allocator_threads.expect("no problems recorded"),
            queue_capacity: queue_capacity.expect("no problems recorded"),
            warnings: r.warnings,
        })
    }
}

/// Reads a host variable and a port variable, each `(name, default)`.
fn read_endpoint(r: &mut Reader, host: (&str, &str), port: (&str, &str)) -> Option<Endpoint> {
    let host = r.string(host.0, host.1);
    let port = r.parsed(port.0, port.1, parse_port)?;
    Some(Endpoint { host, port })
}

fn read_openmatch(r: &mut Reader) -> Option<OpenMatchConfig> {
    let backend = read_endpoint(
        r,
        ("OPENMATCH_BACKEND_ADDR", "open-match-backend.open-match.svc.cluster.local"),
        ("OPENMATCH_BACKEND_PORT", "50505"),
    );
    let match_function = read_endpoint(
        r,
        ("OPENMATCH_MATCH_FUNCTION_ADDR", "agones-openmatch-mmf.agones-openmatch.svc.cluster.local"),
        ("OPENMATCH_MATCH_FUNCTION_PORT", "50502"),
    );
    let ca = r.optional("OPENMATCH_CA_CERT");
    let cert = r.optional("OPENMATCH_CLIENT_CERT");
    let key = r.optional("OPENMATCH_CLIENT_KEY");
    let tls = match (ca, cert, key) {
        (None, None, None) => Some(None),
        (None, _, _) => {
            r.problem(
                "OPENMATCH_CA_CERT",
                "must be set when OPENMATCH_CLIENT_CERT or OPENMATCH_CLIENT_KEY is set",
            );
            None
        }
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(("OPENMATCH_CLIENT_CERT", cert, "OPENMATCH_CLIENT_KEY", key)),
                (Some(_), None) => {
                    r.problem("OPENMATCH_CLIENT_KEY", "must be set when OPENMATCH_CLIENT_CERT is set");
                    return None;
                }
                (None, Some(_)) => {
                    r.problem("OPENMATCH_CLIENT_CERT", "must be set when OPENMATCH_CLIENT_KEY is set");
                    return None;
                }
            };
            load_tls(r, ("OPENMATCH_CA_CERT", ca), identity).map(Some)
        }
    };
    Some(OpenMatchConfig {
        backend: backend?,
        match_function: match_function?,
        tls: tls?,
    })
}

fn read_agones(r: &mut Reader) -> Option<AgonesConfig> {
    let allocator = read_endpoint(
        r,
        ("AGONES_ALLOCATOR_ADDR", "agones-allocator.agones-system.svc.cluster.local"),
        ("AGONES_ALLOCATOR_PORT", "443"),
    );
    let cert = r.string("AGONES_CLIENT_CERT", "/etc/director/agones-tls/tls.crt");
    let key = r.string("AGONES_CLIENT_KEY", "/etc/director/agones-tls/tls.key");
    let ca = r.string("AGONES_CA_CERT", "/etc/director/agones-tls/ca.crt");
    let tls = load_tls(
        r,
        ("AGONES_CA_CERT", ca),
        Some(("AGONES_CLIENT_CERT", cert, "AGONES_CLIENT_KEY", key)),
    );
    let tls_server_name = r.optional("AGONES_TLS_SERVER_NAME");
    let namespace = r.string("AGONES_NAMESPACE", "default");
    let multicluster = r.parsed("AGONES_MULTICLUSTER", "false", parse_bool);
    let region_label = r.string("REGION_LABEL", "region");
    let port_name = r.string("GAMESERVER_PORT_NAME", "default");
    Some(AgonesConfig {
        allocator: allocator?,
        tls: tls?,
        tls_server_name,
        namespace,
        multicluster: multicluster?,
        region_label,
        port_name,
    })
}

/// Loads a CA file and an optional client identity, recording every problem under its variable.
fn load_tls(
    r: &mut Reader,
    (ca_var, ca_path): (&str, String),
    identity: Option<(&str, String, &str, String)>,
) -> Option<TlsMaterial> {
    let ca = tls::load_ca(&PathBuf::from(&ca_path)).map_err(|why| r.problem(ca_var, &why));
    let identity = match identity {
        None => Ok(None),
        Some((cert_var, cert_path, key_var, key_path)) => {
            tls::load_identity(&PathBuf::from(cert_path), &PathBuf::from(key_path))
                .map(Some)
                .map_err(|problems| {
                    for problem in problems {
                        let var = match problem.file {
                            tls::IdentityFile::Certificate => cert_var,
                            tls::IdentityFile::Key => key_var,
                        };
                        r.problem(var, &problem.message);
                    }
                })
        }
    };
    Some(TlsMaterial {
        ca: ca.ok()?,
        identity: identity.ok()?,
    })
}

fn read_profiles(r: &mut Reader) -> ProfileConfig {
    let regions = r
        .parsed("REGIONS", "us-east-1,us-east-2", parse_regions)
        .unwrap_or_default();
    let bands = r
        .parsed("RANGES", "0-24,25-49,50-74,75-99,100-9999", parse_bands)
        .unwrap_or_default();
    let tag = r.string("PROFILE_TAG", "mode.session");
    ProfileConfig { regions, bands, tag }
}

fn read_timing(r: &mut Reader) -> Option<Timing> {
    let positive = |s: &str| parse_duration(s).and_then(non_zero);
    let interval = r.parsed("INTERVAL", "5s", positive);
    let fetch_timeout = r.parsed("FETCH_TIMEOUT", "30s", positive);
    let allocate_timeout = r.parsed("ALLOCATE_TIMEOUT", "10s", positive);
    let assign_timeout = r.parsed("ASSIGN_TIMEOUT", "5s", positive);
    let allocate_retry_budget = r.parsed("ALLOCATE_RETRY_BUDGET", "20s", parse_duration);
    let assign_retry_budget = r.parsed("ASSIGN_RETRY_BUDGET", "10s", parse_duration);
    let shutdown_timeout = r.parsed("SHUTDOWN_TIMEOUT", "25s", parse_duration);
    Some(Timing {
        interval: interval?,
        fetch_timeout: fetch_timeout?,
        allocate_timeout: allocate_timeout?,
        assign_timeout: assign_timeout?,
        allocate_retry_budget: allocate_retry_budget?,
        assign_retry_budget: assign_retry_budget?,
        shutdown_timeout: shutdown_timeout?,
    })
}

/// Parses a duration: a bare number of seconds, or a number followed by `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| "is not a duration: use a whole number with ms, s or m (e.g. 500ms, 5s, 2m)".to_string())?;
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "is too large".to_string())
}

fn non_zero(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be greater than zero".to_string())
    } else {
        Ok(d)
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err("is not a TCP port (1-65535)".to_string()),
        Ok(port) => Ok(port),
    }
}

fn count(text: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".to_string()),
    }
}

/// Parses `REGIONS`: a comma-separated list of distinct Kubernetes label values.
pub fn parse_regions(text: &str) -> Result<Vec<String>, String> {
    let regions: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if regions.is_empty() {
        return Err("lists no region".to_string());
    }
    if let Some(bad) = regions.iter().find(|r| !is_label_value(r)) {
        return Err(format!(
            "region {bad:?} is not a valid Kubernetes label value (letters, digits, '-', '_', '.'; at most 63)"
        ));
    }
    if let Some(dup) = regions
        .iter()
        .enumerate()
        .find(|(i, r)| regions[..*i].contains(r))
    {
        return Err(format!("region {:?} is listed twice", dup.1));
    }
    Ok(regions)
}

/// Parses `RANGES`: comma-separated inclusive bands `min-max` that must not overlap.
pub fn parse_bands(text: &str) -> Result<Vec<Band>, String> {
    let mut bands = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let band = item
            .split_once('-')
            .and_then(|(min, max)| Some((min.trim().parse().ok()?, max.trim().parse().ok()?)))
            .map(|(min, max)| Band { min, max })
            .ok_or_else(|| format!("band {item:?} is not of the form MIN-MAX with whole numbers"))?;
        if band.min > band.max {
            return Err(format!("band {item:?} has min > max"));
        }
        bands.push(band);
    }
    if bands.is_empty() {
        return Err("lists no band".to_string());
    }
    let mut sorted = bands.clone();
    sorted.sort_by_key(|b| b.min);
    if let Some(pair) = sorted.windows(2).find(|w| w[0].max >= w[1].min) {
        return Err(format!(
            "bands {}-{} and {}-{} overlap",
            pair[0].min, pair[0].max, pair[1].min, pair[1].max
        ));
    }
    Ok(bands)
}

/// Whether `value` is a valid Kubernetes label value.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_none_or(|b| b.is_ascii_alphanumeric());
    value.len() <= 63
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
