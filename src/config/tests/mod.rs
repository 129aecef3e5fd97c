//! Tests of the configuration: defaults and every problem named; leader election's settings in
//! election.rs, the property tests in fuzz.rs.

use std::collections::HashMap;
use std::path::Path;

use super::parse::{parse_bands, parse_duration, parse_host_port, parse_regions};
use super::*;
use crate::doubles::certs::{TempDir, TestCa, Usage};
use crate::names::is_label_value;

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

/// The variable each problem names, in order.
fn variables(problems: &[String]) -> Vec<&str> {
    problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect()
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
    assert_eq!(agones.backfill_annotation, "open-match.dev/backfill-id");
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
            match_deadline: s(45),
            pending_release_timeout: s(60),
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
    assert!(problems[0].starts_with("AGONES_CA_CERT: cannot read /etc/director/agones-tls/ca.crt"));
    assert!(
        problems[1].starts_with("AGONES_CLIENT_CERT: cannot read /etc/director/agones-tls/tls.crt")
    );
    assert!(
        problems[2].starts_with("AGONES_CLIENT_KEY: cannot read /etc/director/agones-tls/tls.key")
    );
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
        .set("BACKFILL_ID_ANNOTATION", "backfill id")
        .problems();
    assert_eq!(
        variables(&problems),
        [
            "OPENMATCH_BACKEND_PORT",
            "REGIONS",
            "RANGES",
            "AGONES_MULTICLUSTER",
            "BACKFILL_ID_ANNOTATION",
            "INTERVAL",
            "ASSIGN_TIMEOUT",
            "ALLOCATOR_THREADS",
            "QUEUE_CAPACITY",
            "METRICS_ADDR"
        ],
        "{problems:#?}"
    );
    assert!(problems[2].contains("min > max"));
    assert!(problems[4].contains("\"backfill id\" is not a valid Kubernetes annotation key"));
    assert!(problems[6].contains("greater than zero"));
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
fn host_port_parsing() {
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
}

#[test]
fn the_stages_and_the_deadline_must_fit_in_open_matchs_pending_release_timeout() {
    let problems = Fixture::new()
        .set("ALLOCATE_RETRY_BUDGET", "60s")
        .problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("ALLOCATE_RETRY_BUDGET: "),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].contains(
            "QUEUE_TIMEOUT 10s + ALLOCATE_RETRY_BUDGET 60s + ASSIGN_RETRY_BUDGET 10s = 80s is more than MATCH_DEADLINE (45s)"
        ),
        "{}",
        problems[0]
    );
    let problems = Fixture::new()
        .set("OPENMATCH_PENDING_RELEASE_TIMEOUT", "50s")
        .problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("MATCH_DEADLINE: MATCH_DEADLINE 45s + ASSIGN_TIMEOUT 5s"));
    assert!(problems[0].contains("= 55s is more than OPENMATCH_PENDING_RELEASE_TIMEOUT (50s)"));
    let fits = Fixture::new()
        .set("OPENMATCH_PENDING_RELEASE_TIMEOUT", "30s")
        .set("MATCH_DEADLINE", "20s")
        .set("QUEUE_TIMEOUT", "5s")
        .set("ALLOCATE_RETRY_BUDGET", "10s")
        .set("ASSIGN_RETRY_BUDGET", "5s");
    assert_eq!(
        fits.load().map(|c| c.timing.match_deadline).ok(),
        Some(Duration::from_secs(20))
    );
}

#[test]
fn region_label_and_namespace_are_kubernetes_names() {
    let problems = Fixture::new()
        .set("REGION_LABEL", "agones region")
        .set("AGONES_NAMESPACE", "Game_Servers")
        .problems();
    assert_eq!(
        problems,
        [
            "AGONES_NAMESPACE: \"Game_Servers\" is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)",
            "REGION_LABEL: \"agones region\" is not a valid Kubernetes label key",
        ]
    );
    let fine = Fixture::new()
        .set("REGION_LABEL", "topology.kubernetes.io/region")
        .set("AGONES_NAMESPACE", "game-servers-2");
    assert!(fine.load().is_ok());
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

/// `fixture` with leader election on: the service account's `token` and `namespace` beside its
/// `ca.crt`, and the API server's address.
fn with_lease(fixture: Fixture) -> Fixture {
    fixture.dir.write("token", "service-account-token\n");
    fixture.dir.write("namespace", "games\n");
    let dir = fixture.dir.path().display().to_string();
    fixture
        .set("LEADER_ELECTION_LEASE", "director")
        .set("SERVICE_ACCOUNT_DIR", &dir)
        .set("KUBERNETES_SERVICE_HOST", "10.96.0.1")
}

mod election;
mod fuzz;
