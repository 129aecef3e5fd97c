//! Configuration: every environment variable is read and validated here, once, into plain structs.
//!
//! All problems are collected and reported together; nothing else in the program reads the
//! environment. [`read`] reads the variables section by section, [`files`] loads the files they
//! name (certificates, mappings, the request file), [`parse`] turns one value into what the
//! Director uses.

mod files;
mod parse;
mod read;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::mapping::Mappings;
use crate::proto::allocation::AllocationRequest;
use crate::tls::TlsMaterial;
pub use parse::parse_host_port;

/// Where a gRPC server listens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// BACKFILL_ID_ANNOTATION: the annotation that hands a new backfill's id to its game server.
    pub backfill_annotation: String,
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

/// Leader election on a Kubernetes Lease: which Lease, who this replica is, the timings, and the
/// API server with the service account's CA and token.
#[derive(Debug)]
pub struct LeaderElectionConfig {
    /// LEADER_ELECTION_LEASE: the Lease's name.
    pub lease: String,
    /// LEADER_ELECTION_NAMESPACE, else the service account's namespace.
    pub namespace: String,
    /// POD_NAME, else the host name: this replica's identity in the Lease.
    pub identity: String,
    /// LEASE_DURATION: how long a holder may go without renewing before another takes over.
    pub lease_duration: Duration,
    /// LEASE_RENEW_DEADLINE: a leader that has not renewed for this long stops fetching.
    pub renew_deadline: Duration,
    /// LEASE_RETRY_PERIOD: how often to try to take or renew the Lease; each request's deadline.
    pub retry_period: Duration,
    /// `host:port` of the API server (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT).
    pub api_server: String,
    /// The service account's `ca.crt`.
    pub api_ca: crate::tls::PemFile,
    /// The service account's `token`, read for every request.
    pub token_file: PathBuf,
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
    /// Longest a match may wait for an allocator worker (and its first Allocate turn) before its
    /// tickets are released.
    pub queue_timeout: Duration,
    /// From the moment its stream delivers it, every match is assigned or released within this.
    pub match_deadline: Duration,
    /// Open Match's pendingReleaseTimeout: after it, a match's tickets go to other matches.
    pub pending_release_timeout: Duration,
}

/// What the release after MATCH_DEADLINE may take beyond its one ReleaseTickets attempt
/// (ASSIGN_TIMEOUT) before Open Match's pending-release timeout.
pub const RELEASE_MARGIN: Duration = Duration::from_secs(5);

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
    /// LEADER_ELECTION_LEASE: leader election, or `None` (every replica fetches).
    pub leader_election: Option<LeaderElectionConfig>,
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

/// BACKFILL_ID_ANNOTATION's default: the annotation that hands a new backfill's id to its game
/// server.
pub const DEFAULT_BACKFILL_ID_ANNOTATION: &str = "open-match.dev/backfill-id";

/// Which address of an allocated game server players get (GAMESERVER_ADDRESS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AddressSource {
    /// The response's `address` field (`status`).
    #[default]
    Status,
    /// The first `addresses[]` entry of this type (`InternalIP`, `ExternalIP`, `InternalDNS`,
    /// `ExternalDNS`, `Hostname`).
    Type(String),
}

/// The address types GAMESERVER_ADDRESS may name besides `status`.
pub const ADDRESS_TYPES: [&str; 5] = [
    "InternalIP",
    "ExternalIP",
    "InternalDNS",
    "ExternalDNS",
    "Hostname",
];

impl AddressSource {
    /// Parses a GAMESERVER_ADDRESS value: `status` or one of [`ADDRESS_TYPES`].
    pub fn parse(text: &str) -> Result<AddressSource, String> {
        if text == "status" {
            Ok(AddressSource::Status)
        } else if ADDRESS_TYPES.contains(&text) {
            Ok(AddressSource::Type(text.to_string()))
        } else {
            Err(format!("must be status, {}", ADDRESS_TYPES.join(", ")))
        }
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
        read::config(lookup, origin)
    }
}
