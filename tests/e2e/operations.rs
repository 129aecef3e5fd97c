//! Operations, end to end: /metrics against what the doubles saw, the probes, certificate rotation
//! through a Kubernetes-style `..data` symlink swap, and the HTTP listener under abuse.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{
    get, operations_address, sample, sample_if_any, stop, wait_until, World, WAIT,
};
use agones_openmatch_director::doubles::agones::Reply;
use agones_openmatch_director::doubles::certs::{SecretVolume, TestCa, Usage};
use agones_openmatch_director::doubles::hostile::{probe_within_a_second, HostileClients};
use agones_openmatch_director::doubles::tls::ServerTls;
use grpcio::RpcStatusCode;

#[test]
fn metrics_count_what_the_doubles_saw() {
    let world = World::new();
    world
        .allocator
        .state()
        .script
        .extend([Reply::Fail(RpcStatusCode::RESOURCE_EXHAUSTED); 2]);
    let east1 = world.players("us-east-1", 8);
    let east2 = world.players("us-east-2", 4);
    let director = world.env.start();
    let address = operations_address(&director);
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&east1) && world.all_assigned(&east2)
    });
    wait_until(WAIT, "the third match counted", || {
        let (_, metrics) = get(address, "/metrics");
        metrics.contains("director_matches_total{outcome=\"assigned\"} 3\n")
    });
    let (status, metrics) = get(address, "/metrics");
    assert_eq!(status, 200);
    let attempts = world.allocator.state().requests.len() as f64;
    assert_eq!(attempts, 5.0);
    assert_eq!(
        sample(
            &metrics,
            "director_matches_fetched_total{profile=\"latency-us-east-1-0-49\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "director_matches_fetched_total{profile=\"latency-us-east-2-0-49\"}"
        ),
        1.0
    );
    let ok = sample(
        &metrics,
        "director_allocations_total{region=\"us-east-1\",result=\"ok\"}",
    ) + sample(
        &metrics,
        "director_allocations_total{region=\"us-east-2\",result=\"ok\"}",
    );
    assert_eq!(ok, 3.0);
    let exhausted: f64 = ["us-east-1", "us-east-2"]
        .iter()
        .filter_map(|region| {
            let series = format!(
                "director_allocations_total{{region=\"{region}\",result=\"RESOURCE_EXHAUSTED\"}}"
            );
            sample_if_any(&metrics, &series)
        })
        .sum();
    assert_eq!(exhausted, 2.0);
    assert_eq!(
        sample(&metrics, "director_allocation_duration_seconds_count"),
        attempts
    );
    assert_eq!(
        sample(&metrics, "director_tickets_assigned_total"),
        world.om.state().assigned() as f64
    );
    assert_eq!(sample(&metrics, "director_tickets_released_total"), 0.0);
    assert_eq!(
        sample(&metrics, "director_match_to_assignment_seconds_count"),
        3.0
    );
    assert_eq!(sample(&metrics, "director_queue_depth"), 0.0);
    assert_eq!(
        sample(&metrics, "director_orphaned_game_servers_total"),
        0.0
    );
    let cert = world.env.vars["AGONES_CLIENT_CERT"].clone();
    let expiry = sample(
        &metrics,
        &format!("director_certificate_expiry_timestamp_seconds{{file=\"{cert}\"}}"),
    );
    assert!(expiry > 1.7e9, "{expiry}");
    assert!(metrics.contains("# TYPE director_allocation_duration_seconds histogram\n"));
    assert!(metrics.contains("director_build_info{version=\""));
    stop(director);
}

#[test]
fn a_ca_bundle_with_a_certificate_whose_dates_cannot_be_read_is_used_and_its_expiry_is_unknown() {
    let world = World::new();
    let odd = TestCa::with_unreadable_names("an odd CA that signs nothing here");
    world
        .env
        .dir
        .write("ca.crt", world.pki.server_ca.pem() + &odd.pem());
    let players = world.players("us-east-1", 4);
    let director = world.env.start();
    let address = operations_address(&director);
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&players)
    });
    let cert = world.env.vars["AGONES_CA_CERT"].clone();
    let warning = format!("Certificate #2 in {cert}: dates unknown (malformed DER)");
    assert_eq!(
        director.wait_for_log(&warning, WAIT).len(),
        1,
        "{:#?}",
        director.log()
    );
    let (_, metrics) = get(address, "/metrics");
    let expiry = sample(
        &metrics,
        &format!("director_certificate_expiry_timestamp_seconds{{file=\"{cert}\"}}"),
    );
    assert!(expiry.is_nan(), "{expiry}");
    let (code, report) = world.env.check();
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("ok    AGONES_CA_CERT {cert} #1: valid from "))
            && report.contains(&format!(
                "WARN  AGONES_CA_CERT {cert} #2: dates unknown (malformed DER)"
            )),
        "{report}"
    );
    stop(director);
}

#[test]
fn readiness_follows_the_allocator_and_liveness_stays_ok() {
    let mut world = World::new();
    let director = world.env.start();
    let address = operations_address(&director);
    wait_until(WAIT, "ready", || get(address, "/readyz").0 == 200);
    assert_eq!(get(address, "/healthz").0, 200);

    world.allocator.stop();
    wait_until(WAIT, "not ready while the allocator is down", || {
        let (status, body) = get(address, "/readyz");
        status == 503
            && body.contains("no region can allocate: us-east-1: no connected channel [")
            && body.contains("; us-east-2: no connected channel [")
    });
    assert_eq!(
        get(address, "/healthz"),
        (200, "ok: 12 threads alive\n".to_string(),),
        "4 fetchers (2 regions × 2 bands) and 4 workers in each region"
    );

    world.allocator.restart();
    wait_until(WAIT, "ready again", || get(address, "/readyz").0 == 200);
    assert_eq!(get(address, "/healthz").0, 200);
    assert_eq!(get(address, "/nope").0, 404);
    stop(director);
}

#[test]
fn client_certificate_rotates_through_a_symlink_swap_without_losing_a_match() {
    let mut world = World::new();
    let old_ca = TestCa::new("allocator-client-ca old");
    let new_ca = TestCa::new("allocator-client-ca new");
    let server_ca = TestCa::new("allocator-tls-ca");
    let server = server_ca.issue(&["127.0.0.1"], Usage::Server);
    world.allocator.restart_with(ServerTls {
        client_ca_pem: Some(old_ca.pem() + &new_ca.pem()),
        server: server.clone(),
    });
    let volume_dir = world.env.dir.path().join("agones-tls");
    std::fs::create_dir(&volume_dir).unwrap();
    let mut volume = SecretVolume {
        dir: &volume_dir,
        version: 0,
    };
    let old = old_ca.issue(&["director"], Usage::Client);
    let server_ca_pem = server_ca.pem();
    volume.publish(&[
        ("ca.crt", &server_ca_pem),
        ("tls.crt", &old.cert_pem),
        ("tls.key", &old.key_pem),
    ]);
    for (var, name) in [
        ("AGONES_CA_CERT", "ca.crt"),
        ("AGONES_CLIENT_CERT", "tls.crt"),
        ("AGONES_CLIENT_KEY", "tls.key"),
    ] {
        world
            .env
            .set(var, volume_dir.join(name).display().to_string());
    }
    let director = world.env.start();
    let address = operations_address(&director);
    let before = world.players("us-east-1", 4);
    wait_until(WAIT, "tickets assigned with the old certificate", || {
        world.all_assigned(&before)
    });

    let new = new_ca.issue(&["director"], Usage::Client);
    volume.publish(&[
        ("ca.crt", &server_ca_pem),
        ("tls.crt", &new.cert_pem),
        ("tls.key", &new.key_pem),
    ]);
    director.wait_for_log("Reloaded the agones TLS material", WAIT);
    world.allocator.restart_with(ServerTls {
        client_ca_pem: Some(new_ca.pem()),
        server: server.clone(),
    });
    let after = world.players("us-east-2", 8);
    wait_until(WAIT, "tickets assigned with the new certificate", || {
        world.all_assigned(&after)
    });

    let mismatched = new_ca.issue(&["director"], Usage::Client);
    volume.publish(&[
        ("ca.crt", &server_ca_pem),
        ("tls.crt", &mismatched.cert_pem),
        ("tls.key", &new.key_pem),
    ]);
    let rejected = director
        .wait_for_log("Rejected new agones TLS material", WAIT)
        .remove(0);
    assert!(
        rejected.contains("tls.key does not match the certificate"),
        "{rejected}"
    );
    let last = world.players("us-east-1", 4);
    wait_until(WAIT, "tickets assigned with the kept certificate", || {
        world.all_assigned(&last)
    });

    assert!(
        world.om.state().releases.is_empty(),
        "no match failed because of a switch"
    );
    let (_, metrics) = get(address, "/metrics");
    assert_eq!(
        sample(
            &metrics,
            "director_certificate_reloads_total{endpoint=\"agones\",result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "director_certificate_reloads_total{endpoint=\"agones\",result=\"failure\"}"
        ),
        1.0
    );
    stop(director);
}

#[test]
fn abusive_http_clients_affect_neither_matchmaking_nor_probes() {
    let world = World::new();
    let director = world.env.start();
    let address = operations_address(&director);
    let mut garbage = TcpStream::connect(address).unwrap();
    garbage
        .write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    wait_until(WAIT, "ready", || get(address, "/readyz").0 == 200);

    let hostile = HostileClients::open(address);
    let tickets = world.players("us-east-1", 8);
    wait_until(WAIT, "tickets assigned meanwhile", || {
        world.all_assigned(&tickets)
    });
    for round in 0..3 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                probe_within_a_second(address, path),
                Ok(200),
                "{path}, round {round}"
            );
        }
    }
    drop(hostile);
    stop(director);
}

#[test]
fn allocate_rate_limit_paces_attempts_and_counts_the_ones_that_waited() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("ALLOCATE_RATE_LIMIT", "2");
    let tickets = world
        .om
        .add_players(&["us-east-1"], "us-east-1", 10.0, 8 * 4);
    let director = world.env.start();
    let address = operations_address(&director);
    wait_until(WAIT, "every ticket assigned", || {
        world.all_assigned(&tickets)
    });
    assert_eq!(
        world.allocator.state().calls,
        8,
        "throttled matches wait for their turn: no failed attempt, no retry"
    );
    let metrics = get(address, "/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "director_allocate_throttled_total{region=\"us-east-1\"}"
        ),
        6.0,
        "a burst of 2 (one second's worth) went at once, the other 6 waited"
    );
    stop(director);
}

/// ALLOCATE_RATE_LIMIT=1 and a burst of 20 matches, more than the limit lets through within
/// QUEUE_TIMEOUT: every match is assigned or released within QUEUE_TIMEOUT of being streamed
/// (not when a worker happens to reach it), and the allocator never sees more than the limit.
#[test]
fn a_throttled_burst_is_assigned_or_released_within_queue_timeout_and_the_limit_holds() {
    let queue_timeout = Duration::from_secs(5);
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-49");
    world.env.set("ALLOCATE_RATE_LIMIT", "1");
    world.env.set("QUEUE_TIMEOUT", "5s");
    let tickets = world.players("us-east-1", 20 * 4);
    let director = world.env.start();
    let first_matches: Vec<String> = {
        wait_until(WAIT, "the burst of 20 matches streamed", || {
            world.om.state().matches.len() >= 20
        });
        let om = world.om.state();
        let mut ids: Vec<&String> = om.matches.keys().collect();
        ids.sort_by_key(|id| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()));
        ids.into_iter().take(20).cloned().collect()
    };
    let finished_at = |match_id: &str| {
        let om = world.om.state();
        let issued = &om.matches[match_id];
        (
            issued.streamed_at,
            issued.assigned_at.or(issued.released_at),
        )
    };
    wait_until(
        WAIT,
        "every match of the burst assigned or released",
        || first_matches.iter().all(|id| finished_at(id).1.is_some()),
    );
    stop(director);
    let slack = Duration::from_millis(300);
    for id in &first_matches {
        let (streamed, finished) = finished_at(id);
        let took = finished.unwrap() - streamed;
        assert!(
            took <= queue_timeout + slack,
            "match {id} finished {took:?} after it was streamed"
        );
    }
    // The Director's turns are a second apart; the double sees each call after its own latency,
    // which a loaded machine stretches by tens of milliseconds (52 ms seen): allow a quarter second.
    let latency_jitter = 0.25;
    let calls = world.allocator.state().call_times.clone();
    for (i, first) in calls.iter().enumerate() {
        for (j, later) in calls.iter().enumerate().skip(i) {
            let allowed = 1.0 + (*later - *first).as_secs_f64() + latency_jitter;
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} Allocate calls within {:?}",
                j - i + 1,
                *later - *first
            );
        }
    }
    assert!(
        calls.len() >= 4,
        "some matches were allocated: {}",
        calls.len()
    );
    assert!(world.all_released(&tickets[..4]) || world.all_assigned(&tickets[..4]));
}
