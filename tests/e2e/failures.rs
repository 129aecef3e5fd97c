//! Failure handling, end to end: faults injected into the Open Match and Agones doubles while the
//! real `director` runs. Every test checks the accounting invariant through `final_accounting`.

use std::time::Duration;

use crate::common::{final_accounting, stop, wait_until, World, WAIT};
use agones_openmatch_director::allocator::MATCH_ID_ANNOTATION;
use agones_openmatch_director::doubles::agones::Reply;
use agones_openmatch_director::doubles::openmatch::TicketStatus;
use agones_openmatch_director::rpc::AGONES_VALIDATION_ERROR;
use grpcio::RpcStatusCode;

#[test]
fn allocator_unreachable_at_start_then_up_3s_later() {
    let mut world = World::new();
    world.allocator.stop();
    world.env.set("ALLOCATE_RETRY_BUDGET", "15s");
    let tickets = world.players("us-east-1", 8);
    let director = world.env.start();
    director.wait_for_log("UNAVAILABLE", WAIT);
    // The outage lasts 3 s from the first failed attempt.
    std::thread::sleep(Duration::from_secs(3));
    world.allocator.restart();
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&tickets)
    });
    assert!(world.om.state().releases.is_empty());
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.received, accounting.assigned), (2, 2));
}

#[test]
fn resource_exhausted_for_a_while_then_all_assigned_without_release() {
    let mut world = World::new();
    world.env.set("ALLOCATE_RETRY_BUDGET", "15s");
    world
        .allocator
        .state()
        .script
        .extend([Reply::Fail(RpcStatusCode::RESOURCE_EXHAUSTED); 6]);
    let tickets = world.players("us-east-2", 8);
    let director = world.env.start();
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&tickets)
    });
    assert!(world.om.state().releases.is_empty());
    assert_eq!(world.allocator.state().requests.len(), 2 + 6);
    let accounting = final_accounting(&stop(director));
    assert_eq!(
        (
            accounting.received,
            accounting.assigned,
            accounting.released
        ),
        (2, 2, 0)
    );
}

#[test]
fn one_region_exhausted_forever_releases_its_tickets_after_the_budget() {
    let mut world = World::new();
    world.env.set("ALLOCATE_RETRY_BUDGET", "2s");
    world
        .allocator
        .state()
        .failing_regions
        .insert("us-east-2".into(), RpcStatusCode::RESOURCE_EXHAUSTED);
    let east1 = world.players("us-east-1", 4);
    let east2 = world.players("us-east-2", 4);
    let mut director = world.env.start();
    wait_until(WAIT, "us-east-2 tickets released", || {
        world.all_released(&east2)
    });
    wait_until(WAIT, "us-east-1 tickets assigned", || {
        world.all_assigned(&east1)
    });
    let first_match = {
        let om = world.om.state();
        let mut ids: Vec<_> = om
            .matches
            .iter()
            .filter(|(_, m)| m.ticket_ids == east2)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids[0].clone()
    };
    assert!(
        world.allocations_for(&first_match) > 1,
        "retried within the budget before releasing"
    );
    assert!(director.is_running());
    director.wait_for_log(
        "RESOURCE_EXHAUSTED: injected; releasing its 4 tickets",
        WAIT,
    );
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.assigned, 1);
    assert!(accounting.released >= 1);
}

#[test]
fn allocator_hanging_past_the_deadline_is_retried() {
    let mut world = World::new();
    world.env.set("ALLOCATE_TIMEOUT", "500ms");
    world.env.set("ALLOCATE_RETRY_BUDGET", "10s");
    world
        .allocator
        .state()
        .script
        .push_back(Reply::Hang(Duration::from_secs(3)));
    let tickets = world.players("us-east-1", 4);
    let director = world.env.start();
    wait_until(WAIT, "tickets assigned", || world.all_assigned(&tickets));
    let match_id = world.match_of(&tickets[0]);
    assert_eq!(world.allocations_for(&match_id), 2);
    let director = stop(director);
    assert!(!director.lines_with("DEADLINE_EXCEEDED").is_empty());
    let accounting = final_accounting(&director);
    assert_eq!((accounting.assigned, accounting.released), (1, 0));
}

#[test]
fn allocator_restarted_mid_run_on_the_same_port() {
    let mut world = World::new();
    world.env.set("ALLOCATE_RETRY_BUDGET", "15s");
    let before = world.players("us-east-1", 4);
    let mut director = world.env.start();
    wait_until(WAIT, "first tickets assigned", || {
        world.all_assigned(&before)
    });
    world.allocator.stop();
    let during = world.players("us-east-2", 4);
    director.wait_for_log("UNAVAILABLE", WAIT);
    world.allocator.restart();
    wait_until(WAIT, "tickets assigned after restart", || {
        world.all_assigned(&during)
    });
    assert!(director.is_running());
    assert!(world.om.state().releases.is_empty());
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.received, accounting.assigned), (2, 2));
}

#[test]
fn open_match_restarted_mid_run() {
    let mut world = World::new();
    let before = world.players("us-east-1", 4);
    let mut director = world.env.start();
    wait_until(WAIT, "first tickets assigned", || {
        world.all_assigned(&before)
    });
    world.om.stop();
    director.wait_for_log("FetchMatches for profile", WAIT);
    world.om.restart();
    let after = world.players("us-east-2", 8);
    wait_until(WAIT, "tickets assigned after restart", || {
        world.all_assigned(&after)
    });
    assert!(director.is_running());
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.received, accounting.assigned), (3, 3));
}

#[test]
fn matches_streamed_before_a_fetch_error_are_still_assigned() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.om.state().faults.fetch_fail_after = Some((2, RpcStatusCode::UNKNOWN));
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 8);
    let director = world.env.start();
    wait_until(WAIT, "both matches assigned", || {
        world.all_assigned(&tickets)
    });
    let failure = director.wait_for_log(
        "FetchMatches for profile latency-us-east-1-0-49 failed after 2 matches: UNKNOWN",
        WAIT,
    );
    assert_eq!(failure.len(), 1, "the stream error is logged once");
    assert!(
        failure[0].contains("next try in"),
        "backoff is applied: {}",
        failure[0]
    );
    assert_eq!(world.om.state().matches.len(), 2);
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.received, accounting.assigned), (2, 2));
}

#[test]
fn ticket_not_found_is_logged_and_the_others_are_assigned() {
    let world = World::new();
    let tickets = world.players("us-east-1", 4);
    world.om.state().faults.not_found.push(tickets[1].clone());
    let director = world.env.start();
    let others = [tickets[0].clone(), tickets[2].clone(), tickets[3].clone()];
    wait_until(WAIT, "the other tickets assigned", || {
        world.all_assigned(&others)
    });
    assert_eq!(
        world.om.state().ticket(&tickets[1]).status,
        TicketStatus::Pending
    );
    director.wait_for_log("(3 tickets)", WAIT);
    assert_eq!(
        director
            .lines_with(&format!("ticket {} of match", tickets[1]))
            .iter()
            .filter(|l| l.contains("TICKET_NOT_FOUND"))
            .count(),
        1
    );
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.assigned, accounting.tickets_not_found), (1, 1));
}

#[test]
fn validation_errors_are_not_retried_and_release_at_once() {
    let mut world = World::new();
    world.env.set("ALLOCATE_RETRY_BUDGET", "15s");
    world.env.set("ALLOCATOR_THREADS", "1");
    world.env.set("REGIONS", "us-east-1");
    world.allocator.state().script.extend([
        Reply::Fail(RpcStatusCode::from(AGONES_VALIDATION_ERROR)),
        Reply::Fail(RpcStatusCode::INVALID_ARGUMENT),
    ]);
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 8);
    let director = world.env.start();
    wait_until(WAIT, "all tickets assigned in the end", || {
        world.all_assigned(&tickets)
    });
    assert!(
        world.all_released(&tickets),
        "both first matches were released"
    );
    let first_requests: Vec<_> = world.allocator.state().requests[..2]
        .iter()
        .map(|r| r.get_metadata().get_annotations()[MATCH_ID_ANNOTATION].clone())
        .collect();
    for match_id in &first_requests {
        assert_eq!(
            world.allocations_for(match_id),
            1,
            "{match_id} was not retried"
        );
    }
    assert_eq!(
        director
            .wait_for_log("422 (Agones validation error): injected; releasing", WAIT)
            .len(),
        1
    );
    assert_eq!(
        director
            .wait_for_log("INVALID_ARGUMENT: injected; releasing", WAIT)
            .len(),
        1
    );
    assert!(director.lines_with("retrying in").is_empty());
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.released, accounting.assigned), (2, 2));
}

#[test]
fn allocation_without_ports_is_released_and_the_server_named() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.allocator.state().script.push_back(Reply::NoPorts);
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 4);
    let director = world.env.start();
    wait_until(WAIT, "tickets released", || world.all_released(&tickets));
    let unusable = director.wait_for_log("Game server gs-us-east-1-1 allocated for match", WAIT);
    assert_eq!(unusable.len(), 1);
    assert!(
        unusable[0].contains("is unusable") && unusable[0].contains("no port named \"default\"")
    );
    wait_until(WAIT, "tickets assigned on the next match", || {
        world.all_assigned(&tickets)
    });
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.released, accounting.assigned), (1, 1));
}

#[test]
fn sigterm_with_a_full_queue_and_a_slow_allocator_releases_everything_in_time() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("SHUTDOWN_TIMEOUT", "2s");
    world.env.set("QUEUE_CAPACITY", "2");
    world.env.set("ALLOCATOR_THREADS", "1");
    world.env.set("ALLOCATE_TIMEOUT", "30s");
    world.env.set("ALLOCATE_RETRY_BUDGET", "20s");
    world
        .allocator
        .state()
        .script
        .extend([Reply::Hang(Duration::from_secs(30)); 20]);
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 40);
    let mut director = world.env.start();
    wait_until(
        WAIT,
        "ten matches handed out and one allocation in flight",
        || world.om.state().matches.len() == 10 && world.allocator.state().requests.len() == 1,
    );
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(2 + 2));
    assert_eq!(status.code(), Some(0));
    let accounting = final_accounting(&director);
    assert_eq!(accounting.received, 10);
    assert_eq!(accounting.released, 10);
    assert_eq!(
        accounting.orphaned_game_servers, 1,
        "the cancelled allocation may have allocated a game server"
    );
    let in_flight = world.allocator.state().requests[0]
        .get_metadata()
        .get_annotations()[MATCH_ID_ANNOTATION]
        .clone();
    let cancelled = director.lines_with("could not be found again");
    assert_eq!(cancelled.len(), 1);
    assert!(cancelled[0].contains("CANCELLED: cancelled by shutdown"));
    assert!(cancelled[0].contains(&format!("{}={in_flight}", MATCH_ID_ANNOTATION)));
    assert!(world.all_released(&tickets));
    assert_eq!(world.om.state().count(|s| *s == TicketStatus::Pending), 0);
}

#[test]
fn assignment_that_keeps_failing_orphans_the_server_and_releases_once() {
    let mut world = World::new();
    world.env.set("ASSIGN_RETRY_BUDGET", "1s");
    world.env.set("REGIONS", "us-east-1");
    world.om.state().faults.assign_unavailable = 1_000;
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 4);
    let director = world.env.start();
    wait_until(WAIT, "tickets released", || world.all_released(&tickets));
    let orphaned = director.wait_for_log("is orphaned", WAIT);
    assert!(
        orphaned[0].contains("game server gs-us-east-1-1"),
        "{}",
        orphaned[0]
    );
    assert!(
        orphaned[0].contains(&tickets[0]),
        "ticket ids are logged: {}",
        orphaned[0]
    );
    assert!(
        world.om.state().assigns.len() > 1,
        "AssignTickets was retried"
    );
    world.om.state().faults.assign_unavailable = 0;
    wait_until(WAIT, "assigned once Open Match recovers", || {
        world.all_assigned(&tickets)
    });
    let accounting = final_accounting(&stop(director));
    assert!(accounting.orphaned_game_servers >= 1);
    assert_eq!(accounting.abandoned, 0);
}

#[test]
fn a_match_without_tickets_is_skipped_with_a_warning() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.om.state().faults.empty_matches = 1;
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 4);
    let director = world.env.start();
    wait_until(WAIT, "tickets assigned", || world.all_assigned(&tickets));
    let skipped = director.wait_for_log("Skipping match empty-0", WAIT);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("WARN") && skipped[0].contains("it has no tickets"));
    let accounting = final_accounting(&stop(director));
    assert_eq!((accounting.received, accounting.skipped_empty), (1, 1));
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("SHUTDOWN_TIMEOUT", "60s");
    world.env.set("ALLOCATOR_THREADS", "1");
    world.env.set("ALLOCATE_TIMEOUT", "60s");
    world
        .allocator
        .state()
        .script
        .extend([Reply::Hang(Duration::from_secs(60)); 4]);
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 12);
    let mut director = world.env.start();
    wait_until(WAIT, "an allocation in flight", || {
        world.allocator.state().requests.len() == 1
    });
    director.terminate();
    director.wait_for_log("Shutdown requested", WAIT);
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(!director.lines_with("Second signal").is_empty());
    let accounting = final_accounting(&director);
    assert_eq!((accounting.received, accounting.released), (3, 3));
    assert!(world.all_released(&tickets));
}

/// A backlog far larger than the queue, a slow allocator and a short
/// FETCH_TIMEOUT. The stream is read to its end (never left to its deadline behind a full queue),
/// so every match the double streamed is handled and none is left pending.
#[test]
fn a_backlog_larger_than_the_queue_is_read_to_the_end_and_every_match_handled() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("QUEUE_CAPACITY", "2");
    world.env.set("ALLOCATOR_THREADS", "2");
    world.env.set("FETCH_TIMEOUT", "1s");
    world.allocator.state().latency = Duration::from_millis(50);
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 400);
    let director = world.env.start();
    wait_until(WAIT, "every ticket of the backlog assigned", || {
        world.all_assigned(&tickets)
    });
    assert!(
        director.lines_with("DEADLINE_EXCEEDED").is_empty(),
        "no stream ran into its deadline behind the queue"
    );
    let streamed = world.om.state().matches.len() as u64;
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.received, streamed);
    assert_eq!(accounting.abandoned, 0);
    assert_eq!(world.om.state().count(|s| *s == TicketStatus::Pending), 0);
}

/// A match that cannot start its allocation within QUEUE_TIMEOUT is released at once (the
/// backlog of one stream in few ReleaseTickets calls), counted, and never left pending.
#[test]
fn matches_that_wait_past_the_queue_timeout_are_released_in_a_batch() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("QUEUE_CAPACITY", "1");
    world.env.set("ALLOCATOR_THREADS", "1");
    world.env.set("QUEUE_TIMEOUT", "1s");
    world.env.set("ALLOCATE_TIMEOUT", "30s");
    world.env.set("ALLOCATE_RETRY_BUDGET", "30s");
    world.env.set("SHUTDOWN_TIMEOUT", "1s");
    world
        .allocator
        .state()
        .script
        .push_back(Reply::Hang(Duration::from_secs(30)));
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 40);
    let director = world.env.start();
    wait_until(WAIT, "the backlog released", || {
        world
            .om
            .state()
            .releases
            .iter()
            .any(|ids| ids.len() >= 8 * 4)
    });
    let batch = director.wait_for_log("waited longer than QUEUE_TIMEOUT", WAIT);
    assert!(batch[0].contains("WARN"), "{}", batch[0]);
    assert_eq!(
        world.allocator.state().requests.len(),
        1,
        "released matches never reach the allocator"
    );
    let accounting = final_accounting(&stop(director));
    assert!(accounting.released >= 8, "{accounting:?}");
    assert_eq!(accounting.abandoned, 0);
    assert_eq!(world.om.state().count(|s| *s == TicketStatus::Pending), 0);
    assert!(world.all_released(&tickets));
}

/// With the allocator and Open Match both hung, the Director still exits within
/// SHUTDOWN_TIMEOUT + ASSIGN_TIMEOUT + 1 s of SIGTERM, and its accounting line adds up.
#[test]
fn shutdown_ends_within_its_bound_when_everything_hangs() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("SHUTDOWN_TIMEOUT", "1s");
    world.env.set("ASSIGN_TIMEOUT", "1s");
    world.env.set("ALLOCATOR_THREADS", "2");
    world.env.set("QUEUE_CAPACITY", "2");
    world.env.set("ALLOCATE_TIMEOUT", "30s");
    world
        .allocator
        .state()
        .script
        .extend([Reply::Hang(Duration::from_secs(60)); 20]);
    world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 40);
    let mut director = world.env.start();
    wait_until(WAIT, "two allocations in flight", || {
        world.allocator.state().requests.len() == 2
    });
    world.om.state().faults.hang_writes = true;
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(1 + 1 + 1));
    assert_eq!(status.code(), Some(0));
    let accounting = final_accounting(&director);
    assert_eq!(accounting.received, 10);
    assert_eq!(accounting.assigned + accounting.released, 0);
    assert_eq!(accounting.abandoned, 10, "nothing could be released");
    assert!(
        world.om.state().releases.len() <= 5,
        "one call per match in flight (2), one for the stream's backlog, at most one per worker for the queue: {:?}",
        world.om.state().releases
    );
}

/// A bad day's log stays readable: retries are not logged at INFO or WARN; each region with
/// failures gets one WARN summary per INTERVAL, with its failures by code.
#[test]
fn retries_are_summarized_per_region_instead_of_logged_one_by_one() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("ALLOCATE_RETRY_BUDGET", "15s");
    world.allocator.state().error_rate = 0.5;
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 80);
    let director = world.env.start();
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&tickets)
    });
    let failed_calls = world.allocator.state().calls - 20;
    assert!(failed_calls > 0, "the double failed some calls");
    let director = stop(director);
    assert!(director.lines_with("retrying in").is_empty());
    let summaries = director.lines_with("Region us-east-1: ");
    assert!(!summaries.is_empty());
    assert!(summaries.iter().all(|l| l.contains("WARN")));
    let counted: usize = summaries
        .iter()
        .map(|l| {
            let (failed, _) = l
                .split_once("Region us-east-1: ")
                .unwrap()
                .1
                .split_once(" of ")
                .unwrap();
            failed.parse::<usize>().unwrap()
        })
        .sum();
    let accounting = final_accounting(&director);
    assert_eq!(accounting.assigned, 20);
    assert_eq!(
        counted, failed_calls,
        "every failed attempt is in a summary"
    );
}

/// A region whose allocator hangs holds only its own workers. The other region's
/// matches are all assigned before the hung region's first match even runs out of its retry
/// budget; the hung region's matches are then released, and nothing is lost.
#[test]
fn a_hung_region_does_not_delay_the_other_region() {
    let mut world = World::new();
    world.env.set("ALLOCATOR_THREADS", "2");
    world.env.set("ALLOCATE_TIMEOUT", "1s");
    world.env.set("ALLOCATE_RETRY_BUDGET", "4s");
    world
        .allocator
        .state()
        .hanging_regions
        .insert("us-east-1".into(), Duration::from_secs(60));
    let hung = world.players("us-east-1", 4 * 4);
    let director = world.env.start();
    wait_until(WAIT, "both us-east-1 workers stuck in Allocate", || {
        world.allocator.state().calls >= 2
    });
    let healthy = world.players("us-east-2", 4 * 8);
    wait_until(WAIT, "us-east-2 assigned while us-east-1 hangs", || {
        world.all_assigned(&healthy)
    });
    assert!(
        world.om.state().releases.is_empty(),
        "us-east-2 did not wait for us-east-1's retry budget"
    );
    wait_until(
        WAIT,
        "us-east-1's matches released after their budget",
        || world.all_released(&hung),
    );
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.assigned, 8);
    assert_eq!(accounting.abandoned, 0);
}
