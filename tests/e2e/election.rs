//! Two replicas, one leader: Directors elected on a Lease of the API-server double
//! (LEADER_ELECTION_LEASE), against the same Open Match and allocator doubles. Each replica names
//! its own match function host, so the Open Match double tells whose FetchMatches it received.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{
    final_accounting, get, operations_address, sample, stop, wait_until, Director, World, REGIONS,
    WAIT,
};
use agones_openmatch_director::doubles::apiserver::{FakeApiServer, ServiceAccount};
use agones_openmatch_director::doubles::openmatch::TicketStatus;

const LEASE: &str = "director";
const NAMESPACE: &str = "games";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);

/// The doubles, an API server that accepts `token-1`, and the election settings above.
fn election_world() -> (World, FakeApiServer, ServiceAccount) {
    let mut world = World::new();
    let api = FakeApiServer::start("token-1");
    let account = world.env.elect_on(&api, LEASE, "token-1");
    world.env.set_all(&[
        ("LEASE_DURATION", "3s"),
        ("LEASE_RENEW_DEADLINE", "2s"),
        ("LEASE_RETRY_PERIOD", "500ms"),
    ]);
    (world, api, account)
}

/// Starts replica `name` (POD_NAME), whose FetchMatches name the match function host
/// `<name>.mmf.test`.
fn replica(world: &mut World, name: &str) -> Director {
    world.env.set("POD_NAME", name);
    world
        .env
        .set("OPENMATCH_MATCH_FUNCTION_ADDR", format!("{name}.mmf.test"));
    world.env.start()
}

fn holder(api: &FakeApiServer) -> Option<String> {
    api.state().holder(NAMESPACE, LEASE)
}

fn wait_for_holder(api: &FakeApiServer, name: &str) -> Instant {
    wait_until(WAIT, &format!("{name:?} to hold the Lease"), || {
        holder(api).as_deref() == Some(name)
    });
    Instant::now()
}

/// The match function hosts of the FetchMatches calls received, in order, each once per run.
fn fetching_hosts(world: &World) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for (_, host) in &world.om.state().fetch_times {
        if hosts.last() != Some(host) {
            hosts.push(host.clone());
        }
    }
    hosts
}

/// How many times each ticket was named in an AssignTickets call.
fn assignments_per_ticket(world: &World) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in &world.om.state().assigns {
        for group in request.get_assignments() {
            for id in group.get_ticket_ids() {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn leader_gauge(director: &Director) -> (f64, f64) {
    let (_, metrics) = get(operations_address(director), "/metrics");
    (
        sample(&metrics, "director_leader"),
        sample(&metrics, "director_leader_transitions_total"),
    )
}

#[test]
fn only_the_leader_fetches_and_the_standby_is_warm_and_ready() {
    let (mut world, api, _account) = election_world();
    let a = replica(&mut world, "a");
    wait_for_holder(&api, "a");
    let b = replica(&mut world, "b");
    b.wait_for_log("is held by \"a\": this replica is a warm standby", WAIT);
    let standby = operations_address(&b);
    wait_until(WAIT, "the standby to be ready", || {
        let (code, body) = get(standby, "/readyz");
        code == 200 && body.contains("standby")
    });
    let players = world.players(REGIONS[0], 16);
    wait_until(WAIT, "every player assigned", || {
        world.all_assigned(&players)
    });
    assert_eq!(fetching_hosts(&world), ["a.mmf.test"], "only a fetches");
    assert_eq!(leader_gauge(&a), (1.0, 1.0));
    assert_eq!(leader_gauge(&b), (0.0, 0.0));
    let (_, live) = get(standby, "/healthz");
    assert!(live.starts_with("ok"), "{live}");
    let b = stop(b);
    assert_eq!(
        final_accounting(&b).received,
        0,
        "the standby fetched nothing"
    );
    let a = stop(a);
    assert_eq!(final_accounting(&a).assigned, 4);
    assert_eq!(api.state().holder_changes(), ["a", ""]);
}

#[test]
fn a_killed_leader_is_replaced_in_time_and_every_ticket_is_assigned_once() {
    let (mut world, api, _account) = election_world();
    world.om.state().pending_release_timeout = Some(Duration::from_secs(2));
    let mut a = replica(&mut world, "a");
    wait_for_holder(&api, "a");
    let b = replica(&mut world, "b");
    b.wait_for_log("is held by \"a\"", WAIT);
    let before = world.players(REGIONS[0], 8);
    wait_until(WAIT, "a to assign the first players", || {
        world.all_assigned(&before)
    });
    // The next matches are in flight at a's allocator when a dies.
    world.allocator.state().latency = Duration::from_secs(5);
    let calls = world.allocator.state().calls;
    let in_flight = world.players(REGIONS[0], 8);
    wait_until(WAIT, "a's next Allocate calls", || {
        world.allocator.state().calls >= calls + 2
    });
    a.kill();
    let killed = Instant::now();
    world.allocator.state().latency = Duration::ZERO;
    let taken_over = wait_for_holder(&api, "b") - killed;
    assert!(
        taken_over >= LEASE_DURATION - RETRY_PERIOD - Duration::from_millis(100),
        "b waited for the Lease to expire: {taken_over:?}"
    );
    assert!(
        taken_over <= LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(1),
        "b took over within the lease duration and a retry period of a's first missed renewal: {taken_over:?}"
    );
    let after = world.players(REGIONS[0], 8);
    let everyone: Vec<String> = [&before, &in_flight, &after]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    wait_until(WAIT, "every player assigned", || {
        world.all_assigned(&everyone)
    });
    let assignments = assignments_per_ticket(&world);
    for ticket in &everyone {
        assert_eq!(assignments.get(ticket), Some(&1), "{ticket} assigned once");
    }
    assert_eq!(fetching_hosts(&world), ["a.mmf.test", "b.mmf.test"]);
    assert_eq!(api.state().holder_changes(), ["a", "b"]);
    let lease = api.state().leases[&(NAMESPACE.to_string(), LEASE.to_string())].clone();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 3, "{lease}");
    let b = stop(b);
    assert_eq!(
        final_accounting(&b).assigned,
        4,
        "b assigned the in-flight and the new players"
    );
}

#[test]
fn a_rotated_token_is_read_again_and_the_leader_keeps_its_lease() {
    let (mut world, api, mut account) = election_world();
    let a = replica(&mut world, "a");
    wait_for_holder(&api, "a");
    // The kubelet writes the new token before the old one expires.
    api.state().tokens.push("token-2".into());
    account.publish_token("token-2");
    let renewals_with = |token: &str, since: usize| {
        api.state().requests[since..]
            .iter()
            .filter(|r| r.method == "PUT" && r.token == token && r.status == 200)
            .count()
    };
    wait_until(WAIT, "a renewal with the new token", || {
        renewals_with("token-2", 0) >= 1
    });
    api.state().tokens = vec!["token-2".into()];
    let revoked = api.state().requests.len();
    wait_until(WAIT, "three renewals after the old token expired", || {
        renewals_with("token-2", revoked) >= 3
    });
    let refused = api.state().requests[revoked..]
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(
        refused, 0,
        "the new token was read as soon as it was written"
    );
    let players = world.players(REGIONS[0], 8);
    wait_until(WAIT, "players assigned", || world.all_assigned(&players));
    assert!(a.lines_with("no longer the leader").is_empty());
    assert_eq!(api.state().holder_changes(), ["a"]);
    stop(a);
}

#[test]
fn without_the_api_server_the_leader_stops_fetching_within_the_renew_deadline_and_resumes() {
    let (mut world, api, _account) = election_world();
    let a = replica(&mut world, "a");
    wait_for_holder(&api, "a");
    let first = world.players(REGIONS[0], 8);
    wait_until(WAIT, "the first players assigned", || {
        world.all_assigned(&first)
    });
    api.state().silent = true;
    let silent_at = Instant::now();
    a.wait_for_log(
        "no longer the leader (\"a\" on Lease games/director): the Lease was not renewed for LEASE_RENEW_DEADLINE (2s)",
        WAIT,
    );
    let waiting = world.players(REGIONS[0], 8);
    let unanswered = || {
        api.state()
            .requests
            .iter()
            .filter(|r| r.status == 0)
            .count()
    };
    wait_until(WAIT, "three unanswered tries after stepping down", || {
        unanswered() >= 4
    });
    let last_fetch = world.om.state().fetch_times.last().expect("fetches").0;
    assert!(
        last_fetch < silent_at + RENEW_DEADLINE,
        "no FetchMatches {:?} after the API server went silent (renew deadline {RENEW_DEADLINE:?})",
        last_fetch - silent_at
    );
    let om = world.om.state();
    for ticket in &waiting {
        assert_eq!(om.ticket(ticket).status, TicketStatus::Available);
    }
    drop(om);
    assert_eq!(leader_gauge(&a).0, 0.0);
    api.state().silent = false;
    wait_until(WAIT, "the waiting players assigned", || {
        world.all_assigned(&waiting)
    });
    wait_until(WAIT, "the second 'is now the leader' line", || {
        a.lines_with("is now the leader").len() >= 2
    });
    assert_eq!(a.lines_with("is now the leader").len(), 2, "leader again");
    assert!(
        a.lines_with("warm standby").is_empty(),
        "its own Lease is not another's"
    );
    assert_eq!(leader_gauge(&a), (1.0, 3.0));
    stop(a);
}

#[test]
fn sigterm_drains_then_gives_the_lease_up_and_the_standby_takes_over_at_once() {
    let (mut world, api, _account) = election_world();
    world.env.set("LEASE_DURATION", "30s");
    let a = replica(&mut world, "a");
    wait_for_holder(&api, "a");
    let b = replica(&mut world, "b");
    b.wait_for_log("is held by \"a\"", WAIT);
    world.allocator.state().latency = Duration::from_millis(1500);
    let in_flight = world.players(REGIONS[0], 8);
    wait_until(WAIT, "a's Allocate calls", || {
        world.allocator.state().calls >= 2
    });
    let stopping = Instant::now();
    let a = stop(a);
    assert!(world.all_assigned(&in_flight), "a drained its matches");
    world.allocator.state().latency = Duration::ZERO;
    let taken_over = wait_for_holder(&api, "b") - stopping;
    assert!(
        taken_over < Duration::from_secs(15),
        "b did not wait out the 30 s lease: {taken_over:?}"
    );
    assert_eq!(api.state().holder_changes(), ["a", "", "b"]);
    let released_at = api
        .state()
        .writes
        .iter()
        .find(|(_, spec)| spec["holderIdentity"] == "")
        .expect("a released the Lease")
        .0;
    let last_assigned = world
        .om
        .state()
        .matches
        .values()
        .filter_map(|m| m.assigned_at)
        .max()
        .expect("assignments");
    assert!(
        last_assigned < released_at,
        "the Lease was given up after the drain"
    );
    assert_eq!(a.wait_for_log("Gave up the Lease", WAIT).len(), 1);
    let later = world.players(REGIONS[0], 8);
    wait_until(WAIT, "b assigns new players", || world.all_assigned(&later));
    assert_eq!(fetching_hosts(&world), ["a.mmf.test", "b.mmf.test"]);
    stop(b);
}

#[test]
fn a_forbidden_lease_is_an_error_naming_the_permission_and_nothing_is_fetched() {
    let (mut world, api, _account) = election_world();
    api.state().verbs = vec!["get".into()];
    let a = replica(&mut world, "a");
    a.wait_for_log(
        "needs get, create and update on leases (coordination.k8s.io)",
        WAIT,
    );
    let error = a.lines_with("is forbidden").remove(0);
    assert!(
        error.contains("ERROR") && error.contains("cannot create"),
        "{error}"
    );
    assert!(world.om.state().fetch_times.is_empty());
    api.state().verbs = ["get", "create", "update"].map(String::from).to_vec();
    wait_for_holder(&api, "a");
    let players = world.players(REGIONS[0], 8);
    wait_until(WAIT, "players assigned", || world.all_assigned(&players));
    stop(a);
}
