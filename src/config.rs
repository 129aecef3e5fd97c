//! Configuration: every environment variable is read and validated here, once, into plain structs.
//!
//! All problems are collected and reported together; nothing else in the program reads the
//! environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::allocator::{AddressSource, ADDRESS_TYPES};
use crate::mapping::{self, Mappings};
use crate::proto::allocation::AllocationRequest;
use crate::request_template;
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
        host_port(&self.host, self.port)
    }
}

/// `host:port`, with an IPv6 literal host in brackets (`[fd00::1]:7777`).
pub fn host_port(host: &str, port: impl fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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

/// One region's allocator: where it is and how to talk to it.
#[derive(Clone, Debug)]
pub struct AllocatorTarget {
    /// The allocator service.
    pub endpoint: Endpoint,
    /// mTLS material (CA and client identity are both required).
    pub tls: TlsMaterial,
    /// Name to verify the allocator's certificate against, when it differs from the dial address.
    pub tls_server_name: Option<String>,
    /// `AllocationRequest.multiClusterSetting.enabled`: AGONES_MULTICLUSTER for the shared
    /// allocator, always off for a region's own.
    pub multicluster: bool,
    /// Where the TLS material comes from: `None` for the shared AGONES_CA_CERT, AGONES_CLIENT_CERT
    /// and AGONES_CLIENT_KEY, else the region's AGONES_TLS_DIRS directory.
    pub tls_dir: Option<PathBuf>,
}

/// How to reach each region's Agones allocator and what to ask it for.
#[derive(Clone, Debug)]
pub struct AgonesConfig {
    /// The allocator of every region in REGIONS, by region.
    pub targets: BTreeMap<String, AllocatorTarget>,
    /// `AllocationRequest.namespace`.
    pub namespace: String,
    /// Label key whose value selects the region's game servers.
    pub region_label: String,
    /// With multi-cluster on: the policy label whose value is the region
    /// (`policySelector.matchLabels`), so that only the region's policies are tried.
    pub policy_label: Option<String>,
    /// Name of the game server port that goes into the connection string.
    pub port_name: String,
    /// ALLOCATION_REQUEST_FILE, parsed: merged into every request.
    pub request_template: Option<AllocationRequest>,
    /// GAMESERVER_ADDRESS: which address of the allocated game server players get.
    pub address: AddressSource,
}

/// GA_MAPPING_DIR: the Global Accelerator mappings, loaded.
#[derive(Debug)]
pub struct MappingConfig {
    /// The directory, watched for changes.
    pub dir: PathBuf,
    /// Every region's mapping as loaded at start (shared with the pipeline, not copied).
    pub loaded: Arc<Mappings>,
}

impl AgonesConfig {
    /// The allocator of `region` (a region of REGIONS).
    pub fn target(&self, region: &str) -> &AllocatorTarget {
        &self.targets[region]
    }
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
    /// Longest a match may wait for an allocator worker before its tickets are released.
    pub queue_timeout: Duration,
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Open Match side.
    pub openmatch: OpenMatchConfig,
    /// Agones side.
    pub agones: AgonesConfig,
    /// Global Accelerator translation; `None` when GA_MAPPING_DIR is unset or empty.
    pub mapping: Option<MappingConfig>,
    /// Profiles to fetch.
    pub profiles: ProfileConfig,
    /// Deadlines and intervals.
    pub timing: Timing,
    /// Allocator worker threads of each region.
    pub allocator_threads: usize,
    /// Channels (TLS connections) to each region's allocator, shared by its workers.
    pub allocator_connections: usize,
    /// Allocate attempts per second and region; `None`: no limit.
    pub allocate_rate_limit: Option<f64>,
    /// Bound of the match queue between fetchers and workers.
    pub queue_capacity: usize,
    /// How often the certificate files are checked for changes.
    pub cert_reload_interval: Duration,
    /// Where the metrics and health HTTP listener binds; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
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

/// Where the settings come from, which decides how strict some checks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Our environment variables.
    Variables,
    /// The original director's flags (see [`crate::flags`]): overlapping RANGES are a warning,
    /// as its own manifest has them.
    OriginalFlags,
}

/// Reads variables through a lookup function and collects problems.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    origin: Origin,
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
        Config::from_lookup_as(lookup, Origin::Variables)
    }

    /// Reads the configuration through `lookup`, with the checks of `origin`.
    pub fn from_lookup_as(
        lookup: &dyn Fn(&str) -> Option<String>,
        origin: Origin,
    ) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            lookup,
            origin,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let openmatch = read_openmatch(&mut r);
        let profiles = read_profiles(&mut r);
        let mapping = read_mapping(&mut r, &profiles.regions);
        let mapping_on = !matches!(mapping, Some(None));
        let agones = read_agones(&mut r, &profiles.regions, mapping_on);
        let timing = read_timing(&mut r);
        let allocator_threads = r.parsed("ALLOCATOR_THREADS", "32", |s| count(s, 1, 1024));
        let allocator_connections = r.parsed("ALLOCATOR_CONNECTIONS", "2", |s| count(s, 1, 64));
        let allocate_rate_limit = read_rate_limit(&mut r);
        let queue_capacity = r.parsed("QUEUE_CAPACITY", "64", |s| count(s, 1, 1_000_000));
        let metrics_addr = read_metrics_addr(&mut r);
        let cert_reload_interval = r.parsed("CERT_RELOAD_INTERVAL", "10s", |s| {
            parse_duration(s).and_then(non_zero)
        });
        if !r.problems.is_empty() {
            return Err(ConfigErrors(r.problems));
        }
        Ok(Config {
            openmatch: openmatch.expect("no problems recorded"),
            agones: agones.expect("no problems recorded"),
            mapping: mapping.expect("no problems recorded"),
            profiles,
            timing: timing.expect("no problems recorded"),
            allocator_threads: allocator_threads.expect("no problems recorded"),
            allocator_connections: allocator_connections.expect("no problems recorded"),
            allocate_rate_limit: allocate_rate_limit.expect("no problems recorded"),
            queue_capacity: queue_capacity.expect("no problems recorded"),
            metrics_addr: metrics_addr.expect("no problems recorded"),
            cert_reload_interval: cert_reload_interval.expect("no problems recorded"),
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
        (
            "OPENMATCH_BACKEND_ADDR",
            "open-match-backend.open-match.svc.cluster.local",
        ),
        ("OPENMATCH_BACKEND_PORT", "50505"),
    );
    let match_function = read_endpoint(
        r,
        (
            "OPENMATCH_MATCH_FUNCTION_ADDR",
            "agones-openmatch-mmf.agones-openmatch.svc.cluster.local",
        ),
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
                (Some(cert), Some(key)) => {
                    Some(("OPENMATCH_CLIENT_CERT", cert, "OPENMATCH_CLIENT_KEY", key))
                }
                (Some(_), None) => {
                    r.problem(
                        "OPENMATCH_CLIENT_KEY",
                        "must be set when OPENMATCH_CLIENT_CERT is set",
                    );
                    return None;
                }
                (None, Some(_)) => {
                    r.problem(
                        "OPENMATCH_CLIENT_CERT",
                        "must be set when OPENMATCH_CLIENT_KEY is set",
                    );
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

/// `GA_MAPPING_DIR` (optional): the Global Accelerator mapping of every region, loaded now.
fn read_mapping(r: &mut Reader, regions: &[String]) -> Option<Option<MappingConfig>> {
    let Some(dir) = r.optional("GA_MAPPING_DIR") else {
        return Some(None);
    };
    let dir = PathBuf::from(dir);
    match mapping::load(&dir, regions) {
        Ok(loaded) => Some(Some(MappingConfig {
            dir,
            loaded: Arc::new(loaded),
        })),
        Err(problems) => {
            for problem in problems {
                r.problem("GA_MAPPING_DIR", &problem);
            }
            None
        }
    }
}

/// `GAMESERVER_ADDRESS` (optional): `status`, or an address type; unset or empty means `status`,
/// or `InternalIP` with a Global Accelerator mapping.
fn read_address_source(r: &mut Reader, mapping_on: bool) -> AddressSource {
    let default = if mapping_on { "InternalIP" } else { "status" };
    let text = r
        .optional("GAMESERVER_ADDRESS")
        .unwrap_or_else(|| default.to_string());
    if text == "status" {
        return AddressSource::Status;
    }
    if !ADDRESS_TYPES.contains(&text.as_str()) {
        r.problem(
            "GAMESERVER_ADDRESS",
            &format!(
                "must be status, {} (got {text:?})",
                ADDRESS_TYPES.join(", ")
            ),
        );
    }
    AddressSource::Type(text)
}

fn read_agones(r: &mut Reader, regions: &[String], mapping_on: bool) -> Option<AgonesConfig> {
    let allocator = read_endpoint(
        r,
        (
            "AGONES_ALLOCATOR_ADDR",
            "agones-allocator.agones-system.svc.cluster.local",
        ),
        ("AGONES_ALLOCATOR_PORT", "443"),
    );
    let endpoints = read_region_map(r, "AGONES_ALLOCATOR_ENDPOINTS", regions, |text| {
        parse_host_port(text).map_err(|why| format!("{text:?} {why}"))
    });
    let tls_dirs = read_region_map(r, "AGONES_TLS_DIRS", regions, |text| {
        Ok(PathBuf::from(text))
    });
    let server_names = read_region_map(r, "AGONES_TLS_SERVER_NAMES", regions, |text| {
        Ok(text.to_string())
    });
    let shared_tls_needed = regions.iter().any(|region| !tls_dirs.contains_key(region));
    let shared_tls = shared_tls_needed.then(|| {
        let cert = r.string("AGONES_CLIENT_CERT", "/etc/director/agones-tls/tls.crt");
        let key = r.string("AGONES_CLIENT_KEY", "/etc/director/agones-tls/tls.key");
        let ca = r.string("AGONES_CA_CERT", "/etc/director/agones-tls/ca.crt");
        load_tls(
            r,
            ("AGONES_CA_CERT", ca),
            Some(("AGONES_CLIENT_CERT", cert, "AGONES_CLIENT_KEY", key)),
        )
    });
    let tls_server_name = r.optional("AGONES_TLS_SERVER_NAME");
    let multicluster = r.parsed("AGONES_MULTICLUSTER", "false", parse_bool);
    let mut targets = BTreeMap::new();
    let mut complete = true;
    for region in regions {
        let tls = match tls_dirs.get(region) {
            Some(dir) => load_tls_dir(r, region, dir),
            None => shared_tls.clone().flatten(),
        };
        let own = endpoints.get(region).cloned();
        let own_endpoint = own.is_some();
        match (tls, own.or_else(|| allocator.clone()), multicluster) {
            (Some(tls), Some(endpoint), Some(multicluster)) => {
                let target = AllocatorTarget {
                    endpoint,
                    tls,
                    tls_server_name: server_names
                        .get(region)
                        .cloned()
                        .or_else(|| tls_server_name.clone()),
                    multicluster: multicluster && !own_endpoint,
                    tls_dir: tls_dirs.get(region).cloned(),
                };
                targets.insert(region.clone(), target);
            }
            _ => complete = false,
        }
    }
    let namespace = r.string("AGONES_NAMESPACE", "default");
    let region_label = r.string("REGION_LABEL", "region");
    let policy_label = r.optional("AGONES_POLICY_LABEL");
    if let Some(label) = &policy_label {
        if !is_label_key(label) {
            r.problem(
                "AGONES_POLICY_LABEL",
                &format!("{label:?} is not a valid Kubernetes label key"),
            );
        }
    }
    let port_name = r.string("GAMESERVER_PORT_NAME", "default");
    let request_template = read_request_template(r);
    let address = read_address_source(r, mapping_on);
    complete.then_some(AgonesConfig {
        address,
        targets,
        namespace,
        region_label,
        policy_label,
        port_name,
        request_template: request_template?,
    })
}

/// `ALLOCATION_REQUEST_FILE` (optional): the path of a JSON AllocationRequest; each problem is
/// reported with its JSON path.
fn read_request_template(r: &mut Reader) -> Option<Option<AllocationRequest>> {
    let Some(path) = r.optional("ALLOCATION_REQUEST_FILE") else {
        return Some(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            r.problem(
                "ALLOCATION_REQUEST_FILE",
                &format!("cannot read {path}: {e}"),
            );
            return None;
        }
    };
    match request_template::parse(&text) {
        Ok(template) => Some(Some(template)),
        Err(problems) => {
            for problem in problems {
                r.problem("ALLOCATION_REQUEST_FILE", &format!("{path}: {problem}"));
            }
            None
        }
    }
}

/// Reads an optional `region=value,region=value` variable: every region must be one of `regions`
/// and appear once; `parse` turns each value into what the Director uses. Problems are recorded
/// and their entries left out.
fn read_region_map<T>(
    r: &mut Reader,
    name: &str,
    regions: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> BTreeMap<String, T> {
    let mut map = BTreeMap::new();
    let Some(text) = r.optional(name) else {
        return map;
    };
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((region, value)) = entry.split_once('=') else {
            r.problem(name, &format!("{entry:?} is not region=value"));
            continue;
        };
        let (region, value) = (region.trim(), value.trim());
        if !regions.iter().any(|known| known == region) {
            r.problem(
                name,
                &format!(
                    "region {region:?} is not in REGIONS ({})",
                    regions.join(", ")
                ),
            );
        } else if map.contains_key(region) {
            r.problem(name, &format!("region {region:?} is given twice"));
        } else if value.is_empty() {
            r.problem(name, &format!("region {region:?} has an empty value"));
        } else {
            match parse(value) {
                Ok(parsed) => {
                    map.insert(region.to_string(), parsed);
                }
                Err(why) => r.problem(name, &format!("region {region:?}: {why}")),
            }
        }
    }
    map
}

/// A region's TLS directory: `tls.crt`, `tls.key` and `ca.crt`, the layout of a mounted
/// Kubernetes TLS Secret. Problems name the variable, the region and the file.
fn load_tls_dir(r: &mut Reader, region: &str, dir: &Path) -> Option<TlsMaterial> {
    let var = format!("AGONES_TLS_DIRS ({region})");
    let file = |name: &str| dir.join(name).display().to_string();
    let var = var.as_str();
    load_tls(
        r,
        (var, file("ca.crt")),
        Some((var, file("tls.crt"), var, file("tls.key"))),
    )
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

/// `ALLOCATE_RATE_LIMIT` (optional): Allocate attempts per second and region, 0.1 to 100000.
fn read_rate_limit(r: &mut Reader) -> Option<Option<f64>> {
    let Some(text) = r.optional("ALLOCATE_RATE_LIMIT") else {
        return Some(None);
    };
    match text.parse::<f64>() {
        Ok(rate) if (0.1..=100_000.0).contains(&rate) => Some(Some(rate)),
        _ => {
            r.problem(
                "ALLOCATE_RATE_LIMIT",
                &format!("must be a number of allocations per second from 0.1 to 100000 (got {text:?}); unset means no limit"),
            );
            None
        }
    }
}

/// `METRICS_ADDR`: `host:port` to listen on; set but empty disables the listener.
fn read_metrics_addr(r: &mut Reader) -> Option<Option<SocketAddr>> {
    match r.raw("METRICS_ADDR").map(|v| v.trim().to_string()) {
        Some(value) if value.is_empty() => Some(None),
        value => {
            let text = value.unwrap_or_else(|| "0.0.0.0:8080".to_string());
            match text.parse() {
                Ok(address) => Some(Some(address)),
                Err(_) => {
                    r.problem(
                        "METRICS_ADDR",
                        &format!(
                            "is not an IP:port to listen on (got {text:?}); empty disables it"
                        ),
                    );
                    None
                }
            }
        }
    }
}

fn read_profiles(r: &mut Reader) -> ProfileConfig {
    let regions = r
        .parsed("REGIONS", "us-east-1,us-east-2", parse_regions)
        .unwrap_or_default();
    let ranges = "0-24,25-49,50-74,75-99,100-9999";
    let bands = match r.origin {
        Origin::Variables => r.parsed("RANGES", ranges, parse_bands),
        Origin::OriginalFlags => {
            let bands = r.parsed("RANGES", ranges, parse_band_list);
            if let Some(problem) = bands.as_deref().and_then(overlap) {
                r.warnings.push(format!(
                    "RANGES (-ranges): {problem}; accepted because the original director's flags are in use: Open Match's evaluator keeps only one of two proposals that share a ticket"
                ));
            }
            bands
        }
    }
    .unwrap_or_default();
    let tag = r.string("PROFILE_TAG", "mode.session");
    ProfileConfig {
        regions,
        bands,
        tag,
    }
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
    let queue_timeout = r.parsed("QUEUE_TIMEOUT", "10s", positive);
    Some(Timing {
        interval: interval?,
        fetch_timeout: fetch_timeout?,
        allocate_timeout: allocate_timeout?,
        assign_timeout: assign_timeout?,
        allocate_retry_budget: allocate_retry_budget?,
        assign_retry_budget: assign_retry_budget?,
        shutdown_timeout: shutdown_timeout?,
        queue_timeout: queue_timeout?,
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
    let number: u64 = number.trim().parse().map_err(|_| {
        "is not a duration: use a whole number with ms, s or m (e.g. 500ms, 5s, 2m)".to_string()
    })?;
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
    let bands = parse_band_list(text)?;
    match overlap(&bands) {
        Some(problem) => Err(problem),
        None => Ok(bands),
    }
}

/// Comma-separated inclusive bands `min-max`, overlapping or not.
fn parse_band_list(text: &str) -> Result<Vec<Band>, String> {
    let mut bands = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let band = item
            .split_once('-')
            .and_then(|(min, max)| Some((min.trim().parse().ok()?, max.trim().parse().ok()?)))
            .map(|(min, max)| Band { min, max })
            .ok_or_else(|| {
                format!("band {item:?} is not of the form MIN-MAX with whole numbers")
            })?;
        if band.min > band.max {
            return Err(format!("band {item:?} has min > max"));
        }
        bands.push(band);
    }
    if bands.is_empty() {
        return Err("lists no band".to_string());
    }
    Ok(bands)
}

/// The first two bands that overlap, if any.
fn overlap(bands: &[Band]) -> Option<String> {
    let mut sorted = bands.to_vec();
    sorted.sort_by_key(|b| b.min);
    let pair = sorted.windows(2).find(|w| w[0].max >= w[1].min)?;
    Some(format!(
        "bands {}-{} and {}-{} overlap",
        pair[0].min, pair[0].max, pair[1].min, pair[1].max
    ))
}

/// Parses `host:port`; an IPv6 literal host is bracketed (`[fd00::1]:443`).
pub fn parse_host_port(text: &str) -> Result<Endpoint, String> {
    let malformed = || "is not host:port (an IPv6 address in brackets: [fd00::1]:443)".to_string();
    let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .filter(|h| h.contains(':'))
            .ok_or_else(malformed)?,
        None if host.contains(':') || host.contains(']') => return Err(malformed()),
        None => host,
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if !valid_host {
        return Err(malformed());
    }
    let port = parse_port(port)
        .map_err(|why| format!("has a port that {}", why.trim_start_matches("is ")))?;
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// Whether `key` is a valid Kubernetes label key: an optional DNS-subdomain prefix and `/`, then
/// a name of at most 63 characters in the alphabet of label values, not empty.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|p| is_dns_name(p) && !p.bytes().any(|b| b.is_ascii_uppercase()));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Whether `name` is a DNS host name: dot-separated labels of letters, digits and inner hyphens,
/// each at most 63 characters, at most 253 in all.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !label.is_empty()
                && label.len() <= 63
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::certs::{TempDir, TestCa, Usage};
    use std::collections::HashMap;

    /// A directory with a valid Agones CA, client cert and key, plus the variables naming them.
    struct Fixture {
        dir: TempDir,
        vars: HashMap<String, String>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = TempDir::new("config");
            let ca = TestCa::new("agones CA");
            let client = ca.issue(&["director"], Usage::Client);
            let mut vars = HashMap::new();
            for (var, name, contents) in [
                ("AGONES_CA_CERT", "ca.crt", ca.pem()),
                ("AGONES_CLIENT_CERT", "tls.crt", client.cert_pem),
                ("AGONES_CLIENT_KEY", "tls.key", client.key_pem),
            ] {
                let path = dir.write(name, contents);
                vars.insert(var.to_string(), path.display().to_string());
            }
            Fixture { dir, vars }
        }

        fn set(mut self, var: &str, value: &str) -> Fixture {
            self.vars.insert(var.to_string(), value.to_string());
            self
        }

        fn load(&self) -> Result<Config, ConfigErrors> {
            Config::from_lookup(&|name| self.vars.get(name).cloned())
        }

        fn problems(&self) -> Vec<String> {
            self.load().expect_err("configuration should be rejected").0
        }
    }

    #[test]
    fn every_default() {
        let config = Fixture::new().load().expect("defaults are valid");
        let om = &config.openmatch;
        assert_eq!(
            om.backend.target(),
            "open-match-backend.open-match.svc.cluster.local:50505"
        );
        assert_eq!(
            om.match_function.target(),
            "agones-openmatch-mmf.agones-openmatch.svc.cluster.local:50502"
        );
        assert!(om.tls.is_none());
        let agones = &config.agones;
        assert_eq!(agones.targets.len(), 2);
        for target in agones.targets.values() {
            assert_eq!(
                target.endpoint.target(),
                "agones-allocator.agones-system.svc.cluster.local:443"
            );
            assert!(target.tls.identity.is_some());
            assert_eq!(target.tls_server_name, None);
            assert!(!target.multicluster);
            assert_eq!(target.tls_dir, None);
        }
        assert_eq!(agones.namespace, "default");
        assert_eq!(agones.policy_label, None);
        assert_eq!(agones.region_label, "region");
        assert_eq!(agones.port_name, "default");
        assert_eq!(config.profiles.regions, ["us-east-1", "us-east-2"]);
        let bands: Vec<_> = config
            .profiles
            .bands
            .iter()
            .map(|b| (b.min, b.max))
            .collect();
        assert_eq!(bands, [(0, 24), (25, 49), (50, 74), (75, 99), (100, 9999)]);
        assert_eq!(config.profiles.tag, "mode.session");
        let s = Duration::from_secs;
        assert_eq!(
            config.timing,
            Timing {
                interval: s(5),
                fetch_timeout: s(30),
                allocate_timeout: s(10),
                assign_timeout: s(5),
                allocate_retry_budget: s(20),
                assign_retry_budget: s(10),
                shutdown_timeout: s(25),
                queue_timeout: s(10),
            }
        );
        assert_eq!(config.allocator_threads, 32);
        assert_eq!(config.allocator_connections, 2);
        assert_eq!(config.allocate_rate_limit, None);
        assert_eq!(config.queue_capacity, 64);
        assert_eq!(config.metrics_addr, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(config.cert_reload_interval, s(10));
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn default_certificate_paths_are_named_when_missing() {
        let problems = Config::from_lookup(&|_| None)
            .expect_err("no certificates")
            .0;
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("AGONES_CA_CERT: cannot read /etc/director/agones-tls/ca.crt")
        );
        assert!(problems[1]
            .starts_with("AGONES_CLIENT_CERT: cannot read /etc/director/agones-tls/tls.crt"));
        assert!(problems[2]
            .starts_with("AGONES_CLIENT_KEY: cannot read /etc/director/agones-tls/tls.key"));
    }

    #[test]
    fn explicit_values_are_used() {
        let config = Fixture::new()
            .set("OPENMATCH_BACKEND_ADDR", "om")
            .set("OPENMATCH_BACKEND_PORT", "1234")
            .set("AGONES_ALLOCATOR_ADDR", "::1")
            .set("AGONES_TLS_SERVER_NAME", "agones-allocator")
            .set("AGONES_MULTICLUSTER", "true")
            .set("REGIONS", " eu , asia ")
            .set("RANGES", "0-10,11-20")
            .set("INTERVAL", "250ms")
            .set("FETCH_TIMEOUT", "2m")
            .set("ALLOCATE_RETRY_BUDGET", "0")
            .set("ALLOCATOR_THREADS", "32")
            .load()
            .expect("valid");
        assert_eq!(config.openmatch.backend.target(), "om:1234");
        let asia = config.agones.target("asia");
        assert_eq!(asia.endpoint.target(), "[::1]:443");
        assert_eq!(asia.tls_server_name.as_deref(), Some("agones-allocator"));
        assert!(asia.multicluster);
        assert_eq!(config.profiles.regions, ["eu", "asia"]);
        assert_eq!(config.timing.interval, Duration::from_millis(250));
        assert_eq!(config.timing.fetch_timeout, Duration::from_secs(120));
        assert_eq!(config.timing.allocate_retry_budget, Duration::ZERO);
        assert_eq!(config.allocator_threads, 32);
        let disabled = Fixture::new().set("METRICS_ADDR", "").load().unwrap();
        assert_eq!(disabled.metrics_addr, None);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_variable() {
        let problems = Fixture::new()
            .set("INTERVAL", "soon")
            .set("ALLOCATOR_THREADS", "0")
            .set("RANGES", "10-5")
            .set("REGIONS", " , ")
            .set("OPENMATCH_BACKEND_PORT", "70000")
            .set("AGONES_MULTICLUSTER", "maybe")
            .set("QUEUE_CAPACITY", "many")
            .set("ASSIGN_TIMEOUT", "0s")
            .set("METRICS_ADDR", "localhost")
            .problems();
        let vars: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            vars,
            [
                "OPENMATCH_BACKEND_PORT",
                "REGIONS",
                "RANGES",
                "AGONES_MULTICLUSTER",
                "INTERVAL",
                "ASSIGN_TIMEOUT",
                "ALLOCATOR_THREADS",
                "QUEUE_CAPACITY",
                "METRICS_ADDR"
            ],
            "{problems:#?}"
        );
        assert!(problems[2].contains("min > max"));
        assert!(problems[5].contains("greater than zero"));
    }

    /// A TLS Secret's directory for a region: `tls.crt`, `tls.key` and `ca.crt` of its own CA.
    fn region_tls_dir(fixture: &Fixture, region: &str) -> String {
        let ca = TestCa::new(&format!("{region} allocator CA"));
        let client = ca.issue(&["director"], Usage::Client);
        let dir = fixture.dir.path().join(format!("agones-tls-{region}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), client.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), client.key_pem).unwrap();
        dir.display().to_string()
    }

    #[test]
    fn a_region_with_its_own_allocator_has_its_own_tls_and_no_multicluster() {
        let fixture = Fixture::new();
        let west_dir = region_tls_dir(&fixture, "us-west-2");
        let shared_ca = PathBuf::from(&fixture.vars["AGONES_CA_CERT"]);
        let config = fixture
            .set("REGIONS", "us-east-1,us-west-2,eu-west-1")
            .set("AGONES_MULTICLUSTER", "true")
            .set("AGONES_POLICY_LABEL", "region")
            .set("AGONES_TLS_SERVER_NAME", "allocator.shared")
            .set(
                "AGONES_ALLOCATOR_ENDPOINTS",
                "us-west-2=allocator.west:8443, eu-west-1=[fd00::7]:443",
            )
            .set("AGONES_TLS_DIRS", &format!("us-west-2={west_dir}"))
            .set(
                "AGONES_TLS_SERVER_NAMES",
                "us-west-2=allocator.west.example",
            )
            .load()
            .expect("valid");
        let agones = &config.agones;
        assert_eq!(agones.policy_label.as_deref(), Some("region"));
        let east = agones.target("us-east-1");
        assert_eq!(
            east.endpoint.target(),
            "agones-allocator.agones-system.svc.cluster.local:443"
        );
        assert!(east.multicluster);
        assert_eq!(east.tls_server_name.as_deref(), Some("allocator.shared"));
        assert_eq!(east.tls.ca.path, shared_ca);
        let west = agones.target("us-west-2");
        assert_eq!(west.endpoint.target(), "allocator.west:8443");
        assert!(!west.multicluster);
        assert_eq!(
            west.tls_server_name.as_deref(),
            Some("allocator.west.example")
        );
        assert_eq!(west.tls.ca.path, Path::new(&west_dir).join("ca.crt"));
        assert_eq!(west.tls_dir.as_deref(), Some(Path::new(&west_dir)));
        let eu = agones.target("eu-west-1");
        assert_eq!(eu.endpoint.target(), "[fd00::7]:443");
        assert!(!eu.multicluster);
        assert_eq!(eu.tls_server_name.as_deref(), Some("allocator.shared"));
        assert_eq!(eu.tls_dir, None);
    }

    #[test]
    fn the_shared_certificates_are_not_needed_when_every_region_has_its_own() {
        let fixture = Fixture::new();
        let east = region_tls_dir(&fixture, "us-east-1");
        let west = region_tls_dir(&fixture, "us-east-2");
        let config = fixture
            .set("AGONES_CA_CERT", "/nowhere/ca.crt")
            .set(
                "AGONES_TLS_DIRS",
                &format!("us-east-1={east},us-east-2={west}"),
            )
            .load()
            .expect("the shared files are not read");
        assert!(config.agones.targets.values().all(|t| t.tls_dir.is_some()));
    }

    #[test]
    fn every_per_region_problem_is_named() {
        let fixture = Fixture::new();
        let good = region_tls_dir(&fixture, "us-east-1");
        let mismatched = region_tls_dir(&fixture, "us-east-2");
        let other = TestCa::new("other").issue(&["director"], Usage::Client);
        std::fs::write(Path::new(&mismatched).join("tls.key"), other.key_pem).unwrap();
        let empty = fixture.dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let problems = fixture
            .set("REGIONS", "us-east-1,us-east-2,eu-west-1")
            .set(
                "AGONES_ALLOCATOR_ENDPOINTS",
                "us-east-1=a:443,us-east-1=b:443,ap-south-1=c:443,us-east-2=no-port,eu-west-1=fd00::1:443",
            )
            .set(
                "AGONES_TLS_DIRS",
                &format!("us-east-1={good},us-east-2={mismatched},eu-west-1={}", empty.display()),
            )
            .set("AGONES_TLS_SERVER_NAMES", "us-east-1")
            .set("AGONES_POLICY_LABEL", "Bad Label")
            .problems();
        let expected = [
            "AGONES_ALLOCATOR_ENDPOINTS: region \"us-east-1\" is given twice",
            "AGONES_ALLOCATOR_ENDPOINTS: region \"ap-south-1\" is not in REGIONS (us-east-1, us-east-2, eu-west-1)",
            "AGONES_ALLOCATOR_ENDPOINTS: region \"us-east-2\": \"no-port\" is not host:port",
            "AGONES_ALLOCATOR_ENDPOINTS: region \"eu-west-1\": \"fd00::1:443\" is not host:port",
            "AGONES_TLS_SERVER_NAMES: \"us-east-1\" is not region=value",
            "AGONES_TLS_DIRS (us-east-2): ",
            "AGONES_TLS_DIRS (eu-west-1): ",
            "AGONES_POLICY_LABEL: \"Bad Label\" is not a valid Kubernetes label key",
        ];
        for (i, start) in expected.iter().enumerate() {
            assert!(
                problems.iter().any(|p| p.starts_with(start)),
                "#{i} {start:?} missing from {problems:#?}"
            );
        }
        assert!(
            !problems
                .iter()
                .any(|p| p.starts_with("AGONES_TLS_DIRS (us-east-1)")),
            "the good directory has no problem: {problems:#?}"
        );
        let named = |needle: &str| problems.iter().filter(|p| p.contains(needle)).count();
        assert_eq!(named("does not match the certificate"), 1, "{problems:#?}");
        assert_eq!(named("empty/ca.crt"), 1, "{problems:#?}");
        assert_eq!(named("empty/tls.crt"), 1, "{problems:#?}");
        assert_eq!(named("empty/tls.key"), 1, "{problems:#?}");
    }

    #[test]
    fn host_port_and_label_key_parsing() {
        let endpoint = |text: &str| parse_host_port(text).map(|e| e.target());
        assert_eq!(endpoint("allocator:443"), Ok("allocator:443".to_string()));
        assert_eq!(endpoint("[fd00::1]:443"), Ok("[fd00::1]:443".to_string()));
        assert_eq!(endpoint("10.0.0.1:8443"), Ok("10.0.0.1:8443".to_string()));
        for bad in [
            "allocator",
            ":443",
            "a:0",
            "a:70000",
            "a b:1",
            "[a]:1",
            "fd00::1:443",
            "a:x",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
        assert!(is_label_key("region"));
        assert!(is_label_key("topology.kubernetes.io/region"));
        for bad in ["", "/region", "Bad Label", "UPPER.example/x", "a/", "-x"] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }

    #[test]
    fn empty_value_is_a_problem() {
        let problems = Fixture::new().set("AGONES_NAMESPACE", " ").problems();
        assert_eq!(problems, ["AGONES_NAMESPACE: is empty"]);
    }

    #[test]
    fn overlapping_bands_and_duplicate_regions_are_rejected() {
        assert_eq!(
            parse_bands("0-24,20-49"),
            Err("bands 0-24 and 20-49 overlap".to_string())
        );
        assert_eq!(
            parse_bands("50-99,0-50"),
            Err("bands 0-50 and 50-99 overlap".to_string())
        );
        assert!(parse_bands("0-24,x").unwrap_err().contains("\"x\""));
        assert_eq!(
            parse_regions("eu,us,eu"),
            Err("region \"eu\" is listed twice".to_string())
        );
        assert!(parse_regions("us east")
            .unwrap_err()
            .contains("label value"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn certificate_problems_name_variable_and_file() {
        let fixture = Fixture::new();
        let garbage = fixture.dir.write("garbage.pem", "not a certificate");
        let other = TestCa::new("other").issue(&["x"], Usage::Client);
        let other_key = fixture.dir.write("other.key", other.key_pem);
        let problems = fixture
            .set("AGONES_CA_CERT", &garbage.display().to_string())
            .set("AGONES_CLIENT_KEY", &other_key.display().to_string())
            .problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("AGONES_CA_CERT: "));
        assert!(problems[0].contains("garbage.pem holds no PEM certificate"));
        assert!(problems[1].starts_with("AGONES_CLIENT_KEY: "));
        assert!(problems[1].contains("does not match the certificate"));
    }

    #[test]
    fn key_file_without_key_and_unreadable_cert_are_both_reported() {
        let fixture = Fixture::new();
        let ca_path = fixture.vars["AGONES_CA_CERT"].clone();
        let problems = fixture
            .set("AGONES_CLIENT_CERT", "/nonexistent/tls.crt")
            .set("AGONES_CLIENT_KEY", &ca_path)
            .problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("AGONES_CLIENT_CERT: cannot read /nonexistent/tls.crt"));
        assert!(
            problems[1].starts_with("AGONES_CLIENT_KEY: ")
                && problems[1].contains("no PEM private key")
        );
    }

    #[test]
    fn openmatch_tls_combinations() {
        let fixture = Fixture::new();
        let ca = fixture.vars["AGONES_CA_CERT"].clone();
        let cert = fixture.vars["AGONES_CLIENT_CERT"].clone();
        let key = fixture.vars["AGONES_CLIENT_KEY"].clone();
        let tls_only = Fixture::new().set("OPENMATCH_CA_CERT", &ca).load().unwrap();
        assert!(tls_only.openmatch.tls.unwrap().identity.is_none());
        let mtls = Fixture::new()
            .set("OPENMATCH_CA_CERT", &ca)
            .set("OPENMATCH_CLIENT_CERT", &cert)
            .set("OPENMATCH_CLIENT_KEY", &key)
            .load()
            .unwrap();
        assert!(mtls.openmatch.tls.unwrap().identity.is_some());
        let no_ca = Fixture::new()
            .set("OPENMATCH_CLIENT_CERT", &cert)
            .problems();
        assert_eq!(
            no_ca,
            ["OPENMATCH_CA_CERT: must be set when OPENMATCH_CLIENT_CERT or OPENMATCH_CLIENT_KEY is set"]
        );
        let no_key = Fixture::new()
            .set("OPENMATCH_CA_CERT", &ca)
            .set("OPENMATCH_CLIENT_CERT", &cert)
            .problems();
        assert_eq!(
            no_key,
            ["OPENMATCH_CLIENT_KEY: must be set when OPENMATCH_CLIENT_CERT is set"]
        );
    }

    #[test]
    fn go_director_names_are_accepted_with_a_warning() {
        let fixture = Fixture::new();
        let mut vars = fixture.vars.clone();
        let ca = vars.remove("AGONES_CA_CERT").unwrap();
        vars.insert("CA_FILE".into(), ca);
        vars.insert("NAMESPACE".into(), "agones-system".into());
        let config = Config::from_lookup(&|name| vars.get(name).cloned()).expect("valid");
        assert_eq!(config.agones.namespace, "agones-system");
        assert_eq!(
            config.warnings,
            [
                "CA_FILE is deprecated: set AGONES_CA_CERT instead",
                "NAMESPACE is deprecated: set AGONES_NAMESPACE instead"
            ]
        );
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let fixture = Fixture::new();
        let config = fixture.load().unwrap();
        let key = std::fs::read_to_string(&fixture.vars["AGONES_CLIENT_KEY"]).unwrap();
        let debug = format!("{config:?}");
        let key_body = key.lines().nth(1).unwrap();
        assert!(!debug.contains(key_body));
        assert!(debug.contains("<redacted>"));
    }

    /// Every variable the Director reads that takes a value of its own syntax.
    const FUZZED: &[&str] = &[
        "OPENMATCH_BACKEND_ADDR",
        "OPENMATCH_BACKEND_PORT",
        "OPENMATCH_MATCH_FUNCTION_PORT",
        "AGONES_ALLOCATOR_ADDR",
        "AGONES_ALLOCATOR_PORT",
        "AGONES_MULTICLUSTER",
        "REGIONS",
        "RANGES",
        "INTERVAL",
        "FETCH_TIMEOUT",
        "ALLOCATE_TIMEOUT",
        "ASSIGN_TIMEOUT",
        "ALLOCATE_RETRY_BUDGET",
        "ASSIGN_RETRY_BUDGET",
        "SHUTDOWN_TIMEOUT",
        "QUEUE_TIMEOUT",
        "ALLOCATOR_THREADS",
        "ALLOCATOR_CONNECTIONS",
        "ALLOCATE_RATE_LIMIT",
        "QUEUE_CAPACITY",
        "METRICS_ADDR",
        "CERT_RELOAD_INTERVAL",
    ];

    /// Text that looks like configuration values: digits, units, separators, and anything else.
    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            "[0-9a-z:,.\\- ]{0,24}",
            "[0-9]{1,22}(ms|s|m|h)?",
            "([0-9]{1,6}-[0-9]{1,6},?){0,6}",
            proptest::string::string_regex(".{0,24}").unwrap(),
        ]
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn any_values_give_a_config_or_errors_naming_their_variable(
                values in proptest::collection::vec(value(), FUZZED.len())
            ) {
                let fixture = Fixture::new();
            let mut vars = fixture.vars.clone();
                for (name, value) in FUZZED.iter().zip(&values) {
                    vars.insert(name.to_string(), value.clone());
                }
                if let Err(ConfigErrors(problems)) = Config::from_lookup(&|name| vars.get(name).cloned()) {
                    proptest::prop_assert!(!problems.is_empty());
                    for problem in &problems {
                        let named = FUZZED.iter().any(|name| problem.starts_with(&format!("{name}: ")));
                        proptest::prop_assert!(named, "{problem:?} names no variable");
                    }
                }
            }

            #[test]
            fn durations_parse_or_explain(text in value()) {
                if let Ok(duration) = parse_duration(&text) {
                    let back = format!("{}ms", duration.as_millis());
                    proptest::prop_assert_eq!(parse_duration(&back), Ok(duration));
                }
            }

            #[test]
            fn parsed_bands_are_ordered_and_disjoint(text in value()) {
                if let Ok(bands) = parse_bands(&text) {
                    proptest::prop_assert!(!bands.is_empty());
                    for band in &bands {
                        proptest::prop_assert!(band.min <= band.max);
                    }
                    for (i, a) in bands.iter().enumerate() {
                        for b in &bands[i + 1..] {
                            proptest::prop_assert!(a.max < b.min || b.max < a.min, "{a:?} overlaps {b:?}");
                        }
                    }
                }
            }

            #[test]
            fn parsed_regions_are_distinct_label_values(text in value()) {
                if let Ok(regions) = parse_regions(&text) {
                    for (i, region) in regions.iter().enumerate() {
                        proptest::prop_assert!(is_label_value(region) && !region.is_empty());
                        proptest::prop_assert!(!regions[..i].contains(region));
                    }
                }
            }
        }
    }
}
