//! Reads the configuration section by section: Open Match, the profiles, the mappings, each
//! region's allocator, the timings and the pools. Every problem is recorded in the [`Reader`]; the
//! configuration is returned only when there is none.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::files::{
    load_mapping, load_request_template, load_service_account_ca, load_tls, load_tls_dir,
    read_service_account_file,
};
use super::parse::{
    count, overlap, parse_band_list, parse_bands, parse_bool, parse_duration, parse_host_port,
    parse_port, parse_positive_duration, parse_rate_limit, parse_regions,
};
use super::reader::Reader;
use super::{
    host_port, AddressSource, AgonesConfig, AllocatorTarget, Config, ConfigErrors, Endpoint,
    LeaderElectionConfig, OpenMatchConfig, Origin, ProfileConfig, Timing,
    DEFAULT_BACKFILL_ID_ANNOTATION, RELEASE_MARGIN,
};
use crate::names::{is_dns_name, is_label_key, is_namespace, is_object_name};
use crate::tls::TlsMaterial;

/// The whole configuration through `lookup`, with the checks of `origin`, or every problem.
pub(super) fn config(
    lookup: &dyn Fn(&str) -> Option<String>,
    origin: Origin,
) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(lookup, origin);
    let openmatch = read_openmatch(&mut r);
    let profiles = read_profiles(&mut r);
    let mapping_dir = r.optional("GA_MAPPING_DIR").map(PathBuf::from);
    let mapping_on = mapping_dir.is_some();
    let mapping = mapping_dir.and_then(|dir| load_mapping(&mut r, dir, &profiles.regions));
    let agones = read_agones(&mut r, &profiles.regions, mapping_on);
    let config = Config {
        openmatch,
        agones,
        mapping,
        profiles,
        timing: read_timing(&mut r),
        allocator_threads: r.parsed("ALLOCATOR_THREADS", "32", |s| count(s, 1, 1024)),
        allocator_connections: r.parsed("ALLOCATOR_CONNECTIONS", "2", |s| count(s, 1, 64)),
        allocate_rate_limit: r.optional_parsed("ALLOCATE_RATE_LIMIT", parse_rate_limit),
        queue_capacity: r.parsed("QUEUE_CAPACITY", "64", |s| count(s, 1, 1_000_000)),
        metrics_addr: read_metrics_addr(&mut r),
        cert_reload_interval: r.parsed("CERT_RELOAD_INTERVAL", "10s", parse_positive_duration),
        leader_election: read_leader_election(&mut r),
        warnings: Vec::new(),
    };
    if !r.problems.is_empty() {
        return Err(ConfigErrors(r.problems));
    }
    Ok(Config {
        warnings: r.warnings,
        ..config
    })
}

/// Reads a host variable and a port variable, each `(name, default)`.
fn read_endpoint(r: &mut Reader, host: (&str, &str), port: (&str, &str)) -> Endpoint {
    Endpoint {
        host: r.string(host.0, host.1),
        port: r.parsed(port.0, port.1, parse_port),
    }
}

fn read_openmatch(r: &mut Reader) -> OpenMatchConfig {
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
    OpenMatchConfig {
        backend,
        match_function,
        tls: read_openmatch_tls(r),
    }
}

/// OPENMATCH_CA_CERT, with OPENMATCH_CLIENT_CERT and OPENMATCH_CLIENT_KEY for mTLS; `None` for
/// plaintext (or when a problem was recorded).
fn read_openmatch_tls(r: &mut Reader) -> Option<TlsMaterial> {
    let ca = r.optional("OPENMATCH_CA_CERT");
    let cert = r.optional("OPENMATCH_CLIENT_CERT");
    let key = r.optional("OPENMATCH_CLIENT_KEY");
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() {
            r.problem(
                "OPENMATCH_CA_CERT",
                "must be set when OPENMATCH_CLIENT_CERT or OPENMATCH_CLIENT_KEY is set",
            );
        }
        return None;
    };
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
    load_tls(r, ("OPENMATCH_CA_CERT", ca), identity)
}

/// `GAMESERVER_ADDRESS` (optional): `status`, or an address type; unset or empty means `status`,
/// or `InternalIP` with a Global Accelerator mapping.
fn read_address_source(r: &mut Reader, mapping_on: bool) -> AddressSource {
    r.optional_parsed("GAMESERVER_ADDRESS", AddressSource::parse)
        .unwrap_or_else(|| match mapping_on {
            true => AddressSource::Type("InternalIP".to_string()),
            false => AddressSource::Status,
        })
}

fn read_agones(r: &mut Reader, regions: &[String], mapping_on: bool) -> AgonesConfig {
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
    for region in regions {
        let tls = match tls_dirs.get(region) {
            Some(dir) => load_tls_dir(r, region, dir),
            None => shared_tls.clone().flatten(),
        };
        let own = endpoints.get(region).cloned();
        let own_endpoint = own.is_some();
        // A region whose material did not load has a problem recorded: no configuration is made.
        let Some(tls) = tls else { continue };
        let target = AllocatorTarget {
            endpoint: own.unwrap_or_else(|| allocator.clone()),
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
    let namespace = r.checked(
        "AGONES_NAMESPACE",
        "default",
        is_namespace,
        "a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)",
    );
    let label_key = "a valid Kubernetes label key";
    let region_label = r.checked("REGION_LABEL", "region", is_label_key, label_key);
    let policy_label = r.optional("AGONES_POLICY_LABEL");
    if let Some(label) = policy_label.as_ref().filter(|label| !is_label_key(label)) {
        r.problem(
            "AGONES_POLICY_LABEL",
            &format!("{label:?} is not a valid Kubernetes label key"),
        );
    }
    let port_name = r.string("GAMESERVER_PORT_NAME", "default");
    let backfill_annotation = r.checked(
        "BACKFILL_ID_ANNOTATION",
        DEFAULT_BACKFILL_ID_ANNOTATION,
        is_label_key,
        "a valid Kubernetes annotation key",
    );
    let request_template = r
        .optional("ALLOCATION_REQUEST_FILE")
        .and_then(|path| load_request_template(r, &path));
    let address = read_address_source(r, mapping_on);
    AgonesConfig {
        address,
        targets,
        namespace,
        region_label,
        policy_label,
        port_name,
        request_template,
        backfill_annotation,
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

/// `METRICS_ADDR`: `host:port` to listen on; set but empty disables the listener.
fn read_metrics_addr(r: &mut Reader) -> Option<SocketAddr> {
    let text = match r.raw("METRICS_ADDR") {
        Some(value) if value.trim().is_empty() => return None,
        Some(value) => value.trim().to_string(),
        None => "0.0.0.0:8080".to_string(),
    };
    let address = text.parse().ok();
    if address.is_none() {
        r.problem(
            "METRICS_ADDR",
            &format!("is not an IP:port to listen on (got {text:?}); empty disables it"),
        );
    }
    address
}

fn read_profiles(r: &mut Reader) -> ProfileConfig {
    let regions = r.parsed("REGIONS", "us-east-1,us-east-2", parse_regions);
    let ranges = "0-24,25-49,50-74,75-99,100-9999";
    let bands = match r.origin {
        Origin::Variables => r.parsed("RANGES", ranges, parse_bands),
        Origin::OriginalFlags => {
            let bands = r.parsed("RANGES", ranges, parse_band_list);
            if let Some(problem) = overlap(&bands) {
                r.warnings.push(format!(
                    "RANGES (-ranges): {problem}; accepted because the original director's flags are in use: Open Match's evaluator keeps only one of two proposals that share a ticket"
                ));
            }
            bands
        }
    };
    let tag = r.string("PROFILE_TAG", "mode.session");
    ProfileConfig {
        regions,
        bands,
        tag,
    }
}

/// `LEADER_ELECTION_LEASE` (optional) and what goes with it; `None` when unset (or when a
/// problem was recorded).
fn read_leader_election(r: &mut Reader) -> Option<LeaderElectionConfig> {
    let lease = r.optional("LEADER_ELECTION_LEASE")?;
    let problems_before = r.problems.len();
    if !is_object_name(&lease) {
        r.problem(
            "LEADER_ELECTION_LEASE",
            &format!("{lease:?} is not a Lease name (a lower-case DNS name)"),
        );
    }
    let dir = PathBuf::from(r.string("SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT_DIR));
    let namespace = match r.optional("LEADER_ELECTION_NAMESPACE") {
        Some(namespace) => namespace,
        None => read_service_account_file(r, &dir, "namespace", "LEADER_ELECTION_NAMESPACE"),
    };
    if !namespace.is_empty() && !is_namespace(&namespace) {
        r.problem(
            "LEADER_ELECTION_NAMESPACE",
            &format!("{namespace:?} is not a Kubernetes namespace name"),
        );
    }
    let identity = r.optional("POD_NAME").unwrap_or_else(host_name);
    let lease_duration = r.parsed("LEASE_DURATION", "15s", parse_positive_duration);
    let renew_deadline = r.parsed("LEASE_RENEW_DEADLINE", "10s", parse_positive_duration);
    let retry_period = r.parsed("LEASE_RETRY_PERIOD", "2s", parse_positive_duration);
    if lease_duration.subsec_nanos() != 0 {
        r.problem(
            "LEASE_DURATION",
            &format!("{lease_duration:?} is not a whole number of seconds (a Lease holds seconds)"),
        );
    }
    if lease_duration <= renew_deadline {
        r.problem(
            "LEASE_DURATION",
            &format!("{lease_duration:?} must be longer than LEASE_RENEW_DEADLINE ({renew_deadline:?}): a leader stops fetching before another replica may take over"),
        );
    }
    if renew_deadline <= retry_period.mul_f64(1.2) {
        r.problem(
            "LEASE_RENEW_DEADLINE",
            &format!("{renew_deadline:?} must be longer than 1.2 × LEASE_RETRY_PERIOD ({retry_period:?}), as in client-go: a leader gets more than one try to renew"),
        );
    }
    let host = r.optional("KUBERNETES_SERVICE_HOST");
    match &host {
        None => r.problem(
            "KUBERNETES_SERVICE_HOST",
            "is not set: leader election needs the API server (the kubelet sets it in every pod)",
        ),
        Some(host) if host.parse::<IpAddr>().is_err() && !is_dns_name(host) => r.problem(
            "KUBERNETES_SERVICE_HOST",
            &format!("{host:?} is neither an IP address nor a DNS name"),
        ),
        Some(_) => {}
    }
    let port = r.parsed("KUBERNETES_SERVICE_PORT", "443", parse_port);
    let ca = load_service_account_ca(r, &dir);
    let token_file = dir.join("token");
    read_service_account_file(r, &dir, "token", "SERVICE_ACCOUNT_DIR");
    if r.problems.len() > problems_before {
        return None;
    }
    Some(LeaderElectionConfig {
        lease,
        namespace,
        identity,
        lease_duration,
        renew_deadline,
        retry_period,
        api_server: host_port(&host?, port),
        api_ca: ca?,
        token_file,
    })
}

/// Where Kubernetes mounts a pod's service account.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// This machine's host name (a pod's is its name), for POD_NAME's default.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "director".to_string())
}

fn read_timing(r: &mut Reader) -> Timing {
    let problems_before = r.problems.len();
    let timing = Timing {
        interval: r.parsed("INTERVAL", "5s", parse_positive_duration),
        fetch_timeout: r.parsed("FETCH_TIMEOUT", "30s", parse_positive_duration),
        allocate_timeout: r.parsed("ALLOCATE_TIMEOUT", "10s", parse_positive_duration),
        assign_timeout: r.parsed("ASSIGN_TIMEOUT", "5s", parse_positive_duration),
        allocate_retry_budget: r.parsed("ALLOCATE_RETRY_BUDGET", "20s", parse_duration),
        assign_retry_budget: r.parsed("ASSIGN_RETRY_BUDGET", "10s", parse_duration),
        shutdown_timeout: r.parsed("SHUTDOWN_TIMEOUT", "25s", parse_duration),
        queue_timeout: r.parsed("QUEUE_TIMEOUT", "10s", parse_positive_duration),
        match_deadline: r.parsed("MATCH_DEADLINE", "45s", parse_positive_duration),
        pending_release_timeout: r.parsed(
            "OPENMATCH_PENDING_RELEASE_TIMEOUT",
            "60s",
            parse_positive_duration,
        ),
    };
    if r.problems.len() == problems_before {
        check_match_deadline(r, &timing);
    }
    timing
}

/// A match's stages must fit in MATCH_DEADLINE, and MATCH_DEADLINE with the release after it in
/// Open Match's pending-release timeout; each problem names the setting that weighs most, with
/// the sum.
fn check_match_deadline(r: &mut Reader, timing: &Timing) {
    let stages = [
        ("QUEUE_TIMEOUT", timing.queue_timeout),
        ("ALLOCATE_RETRY_BUDGET", timing.allocate_retry_budget),
        ("ASSIGN_RETRY_BUDGET", timing.assign_retry_budget),
    ];
    let sum: Duration = stages.iter().map(|(_, d)| *d).sum();
    if sum > timing.match_deadline {
        let heaviest = stages.iter().max_by_key(|(_, d)| *d).map_or("", |(n, _)| n);
        let terms: Vec<String> = stages.iter().map(|(n, d)| format!("{n} {d:?}")).collect();
        r.problem(
            heaviest,
            &format!(
                "{} = {sum:?} is more than MATCH_DEADLINE ({:?}): a match's stages must fit in its deadline",
                terms.join(" + "),
                timing.match_deadline
            ),
        );
    }
    let bound = timing.match_deadline + timing.assign_timeout + RELEASE_MARGIN;
    if bound > timing.pending_release_timeout {
        r.problem(
            "MATCH_DEADLINE",
            &format!(
                "MATCH_DEADLINE {:?} + ASSIGN_TIMEOUT {:?} (the release after it) + {RELEASE_MARGIN:?} of margin = {bound:?} is more than OPENMATCH_PENDING_RELEASE_TIMEOUT ({:?}): Open Match would hand the tickets to another match before the Director is done",
                timing.match_deadline, timing.assign_timeout, timing.pending_release_timeout
            ),
        );
    }
}
