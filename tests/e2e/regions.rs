//! Regions that stand alone, end to end: an allocator per region with its own CAs
//! (AGONES_ALLOCATOR_ENDPOINTS, AGONES_TLS_DIRS), one region's hung or TLS-refusing allocator
//! with the other region unaffected, and the circuit breaker opening and closing.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{
    final_accounting, get, operations_address, sample, stop, wait_until, Director, World, REGIONS,
    WAIT,
};
use agones_openmatch_director::doubles::agones::{AgonesPki, FakeAllocator};

/// A region's own allocator double, with its own server and client CAs, and the directory (laid
/// out like a mounted TLS Secret) the Director reads that region's certificates from.
struct RegionalAllocator {
    pki: AgonesPki,
    allocator: FakeAllocator,
    tls_dir: PathBuf,
}

impl RegionalAllocator {
    fn start(world: &World, region: &str) -> RegionalAllocator {
        let pki = AgonesPki::new();
        let allocator = FakeAllocator::start(pki.server_tls(&["127.0.0.1"]));
        let tls_dir = world.env.dir.path().join(format!("agones-tls-{region}"));
        std::fs::create_dir_all(&tls_dir).unwrap();
        let client = pki.client();
        std::fs::write(tls_dir.join("ca.crt"), pki.server_ca.pem()).unwrap();
        std::fs::write(tls_dir.join("tls.crt"), client.cert_pem).unwrap();
        std::fs::write(tls_dir.join("tls.key"), client.key_pem).unwrap();
        RegionalAllocator {
            pki,
            allocator,
            tls_dir,
        }
    }
}

/// A world whose two regions each have their own allocator; the shared one (with multi-cluster
/// on) must never be called.
fn world_with_an_allocator_per_region() -> (World, [RegionalAllocator; 2]) {
    let mut world = World::new();
    let allocators = REGIONS.map(|region| RegionalAllocator::start(&world, region));
    let list = |value: &dyn Fn(&RegionalAllocator) -> String| {
        REGIONS
            .iter()
            .zip(&allocators)
            .map(|(region, a)| format!("{region}={}", value(a)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let endpoints = list(&|a| format!("127.0.0.1:{}", a.allocator.port));
    let dirs = list(&|a| a.tls_dir.display().to_string());
    world.env.set("AGONES_ALLOCATOR_ENDPOINTS", endpoints);
    world.env.set("AGONES_TLS_DIRS", dirs);
    world.env.set("AGONES_MULTICLUSTER", "true");
    world.env.set("ALLOCATOR_THREADS", "2");
    world.env.set("ALLOCATE_TIMEOUT", "1s");
    world.env.set("ALLOCATE_RETRY_BUDGET", "4s");
    (world, allocators)
}

#[test]
fn every_match_goes_to_its_regions_own_allocator_with_multicluster_off() {
    let (world, allocators) = world_with_an_allocator_per_region();
    let east1 = world.players("us-east-1", 8);
    let east2 = world.players("us-east-2", 12);
    let director = world.env.start();
    wait_until(WAIT, "every ticket assigned", || {
        world.all_assigned(&east1) && world.all_assigned(&east2)
    });
    let (code, report) = world.env.check();
    stop(director);
    for (region, regional) in REGIONS.iter().zip(&allocators) {
        let state = regional.allocator.state();
        assert!(!state.requests.is_empty(), "{region} got no request");
        for request in &state.requests {
            let selector = &request.get_gameServerSelectors()[0];
            assert_eq!(selector.get_matchLabels()["region"], *region);
            assert!(!request.get_multiClusterSetting().get_enabled());
        }
    }
    assert_eq!(allocators[0].allocator.state().requests.len(), 2);
    assert_eq!(allocators[1].allocator.state().requests.len(), 3);
    assert_eq!(world.allocator.state().calls, 0, "the shared allocator");
    assert_eq!(code, Some(0), "{report}");
    for (region, regional) in REGIONS.iter().zip(&allocators) {
        let heading = format!(
            "Region {region}: Agones allocator 127.0.0.1:{} (certificate checked for the name \"127.0.0.1\"):",
            regional.allocator.port
        );
        assert!(report.contains(&heading), "{heading} in\n{report}");
        let ca = format!("ca.crt of AGONES_TLS_DIRS ({region})");
        assert!(
            report.contains(&format!("server certificate verified against {ca}")),
            "{report}"
        );
    }
}

/// How region us-east-1's allocator fails, and how it is healed.
#[derive(Clone, Copy)]
enum Outage {
    /// Every call runs to its deadline.
    Hang,
    /// Every TLS handshake is refused: the allocator presents a certificate of a CA the
    /// Director does not trust.
    TlsRefusal,
}

impl Outage {
    fn begin(self, regional: &mut RegionalAllocator) {
        match self {
            Outage::Hang => {
                let mut state = regional.allocator.state();
                let hang = Duration::from_secs(600);
                state.hanging_regions.insert("us-east-1".into(), hang);
            }
            Outage::TlsRefusal => {
                let stranger = AgonesPki::new().server_tls(&["127.0.0.1"]);
                regional.allocator.restart_with(stranger);
            }
        }
    }

    fn end(self, regional: &mut RegionalAllocator) {
        match self {
            Outage::Hang => regional.allocator.state().hanging_regions.clear(),
            Outage::TlsRefusal => {
                let own = regional.pki.server_tls(&["127.0.0.1"]);
                regional.allocator.restart_with(own);
            }
        }
    }
}

fn circuit_open(address: std::net::SocketAddr) -> f64 {
    let (_, metrics) = get(address, "/metrics");
    sample(
        &metrics,
        "director_region_circuit_open{region=\"us-east-1\"}",
    )
}

/// Region us-east-1's allocator fails; us-east-2's players are assigned meanwhile, us-east-1's
/// circuit opens (its matches are released at once, /readyz stays ready because us-east-2 can
/// allocate), then closes once the allocator is back, and every us-east-1 player is assigned.
fn one_region_down_the_other_unaffected(outage: Outage) {
    let (world, mut allocators) = world_with_an_allocator_per_region();
    outage.begin(&mut allocators[0]);
    let down = world.players("us-east-1", 8);
    let director = world.env.start();
    let address = operations_address(&director);
    director.wait_for_log("Allocate attempts failed", WAIT);
    let healthy = world.players("us-east-2", 16);
    wait_until(WAIT, "us-east-2 assigned while us-east-1 is down", || {
        world.all_assigned(&healthy)
    });
    assert!(down
        .iter()
        .all(|id| !world.all_assigned(std::slice::from_ref(id))));
    wait_until(WAIT, "us-east-1's circuit open", || {
        circuit_open(address) == 1.0
    });
    director.wait_for_log("Circuit of region us-east-1 open", WAIT);
    wait_until(WAIT, "us-east-1's matches released", || {
        world.all_released(&down)
    });
    // While its circuit is open, us-east-1's profiles fetch nothing (their matches would only be
    // released at once), but for one round when the probe is due; us-east-2's fetch every INTERVAL.
    let fetches_of = |region: &str| {
        let profiles = format!("latency-{region}-");
        let om = world.om.state();
        om.fetches
            .iter()
            .filter(|f| f.get_profile().get_name().starts_with(&profiles))
            .count()
    };
    let (down_fetches, healthy_fetches) = (fetches_of("us-east-1"), fetches_of("us-east-2"));
    wait_until(WAIT, "us-east-2's profiles fetching on", || {
        fetches_of("us-east-2") >= healthy_fetches + 16
    });
    let fetched_while_open = fetches_of("us-east-1") - down_fetches;
    assert!(
        fetched_while_open <= 4,
        "us-east-1's 2 profiles fetched {fetched_while_open} times while its circuit was open"
    );
    let (status, body) = get(address, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("1/2 regions can allocate; regions down: us-east-1: "),
        "{body}"
    );
    let more_healthy = world.players("us-east-2", 8);
    wait_until(WAIT, "us-east-2 still assigned", || {
        world.all_assigned(&more_healthy)
    });

    outage.end(&mut allocators[0]);
    wait_until(WAIT, "us-east-1's players assigned after all", || {
        world.all_assigned(&down)
    });
    director.wait_for_log("Circuit of region us-east-1 closed", WAIT);
    assert_eq!(circuit_open(address), 0.0);
    let accounting = final_accounting(&stop(director));
    assert!(accounting.released >= 2, "{accounting:?}");
    assert_eq!(accounting.abandoned, 0);
    assert_eq!(
        accounting.assigned,
        2 + 4 + 2,
        "8, 16 and 8 players: 8 matches"
    );
}

#[test]
fn a_hung_region_stays_alone_and_its_circuit_opens_and_closes() {
    one_region_down_the_other_unaffected(Outage::Hang);
}

#[test]
fn a_region_refusing_tls_stays_alone_and_its_circuit_opens_and_closes() {
    one_region_down_the_other_unaffected(Outage::TlsRefusal);
}

#[test]
fn every_per_region_and_request_file_error_is_named_before_any_call() {
    let (mut world, _allocators) = world_with_an_allocator_per_region();
    let request_file = world.env.dir.write(
        "allocation-request.json",
        r#"{"scheduling": "Pack", "counters": {"rooms": {"action": "Add"}}}"#,
    );
    let request_file = request_file.display().to_string();
    world
        .env
        .set("ALLOCATION_REQUEST_FILE", request_file.clone());
    world.env.set(
        "AGONES_ALLOCATOR_ENDPOINTS",
        "us-east-1=127.0.0.1:1,us-east-1=127.0.0.1:2,eu-west-1=h:443,us-east-2=nohost",
    );
    world.env.set("AGONES_TLS_DIRS", "us-east-2=/nowhere");
    world.env.set("AGONES_TLS_SERVER_NAMES", "us-east-3=x");
    world.env.set("AGONES_POLICY_LABEL", "not a label");
    let mut director: Director = world.env.start();
    let status = director.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2));
    let log = director.log().join("\n");
    for problem in [
        "AGONES_ALLOCATOR_ENDPOINTS: region \"us-east-1\" is given twice",
        "AGONES_ALLOCATOR_ENDPOINTS: region \"eu-west-1\" is not in REGIONS (us-east-1, us-east-2)",
        "AGONES_ALLOCATOR_ENDPOINTS: region \"us-east-2\": \"nohost\" is not host:port",
        "AGONES_TLS_DIRS (us-east-2): cannot read /nowhere/ca.crt",
        "AGONES_TLS_DIRS (us-east-2): cannot read /nowhere/tls.crt",
        "AGONES_TLS_DIRS (us-east-2): cannot read /nowhere/tls.key",
        "AGONES_TLS_SERVER_NAMES: region \"us-east-3\" is not in REGIONS",
        "AGONES_POLICY_LABEL: \"not a label\" is not a valid Kubernetes label key",
        &format!("ALLOCATION_REQUEST_FILE: {request_file}: $.scheduling: unknown value \"Pack\""),
        &format!("ALLOCATION_REQUEST_FILE: {request_file}: $.counters.rooms.action: unknown action \"Add\""),
    ] {
        assert!(log.contains(problem), "{problem:?} missing from\n{log}");
    }
    assert_eq!(
        world.om.state().fetches.len(),
        0,
        "no call before the check"
    );
}
