//! Every match keeps its promise: one game server, assigned or released within MATCH_DEADLINE,
//! well inside Open Match's pending-release timeout, whatever the allocator, Open Match or the
//! machine do.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{
    final_accounting, get, operations_address, sample_if_any, stop, wait_until, World, WAIT,
};
use agones_openmatch_director::doubles::agones::Reply;
use agones_openmatch_director::doubles::openmatch::TicketStatus;

/// Every ticket of the match was deleted while it was in flight: no player will join its game
/// server, so the server is orphaned and the match is not counted as assigned.
#[test]
fn a_match_whose_tickets_are_all_gone_is_not_assigned_and_its_server_is_orphaned() {
    let world = World::new();
    let tickets = world.players("us-east-1", 4);
    world
        .om
        .state()
        .faults
        .not_found
        .extend(tickets.iter().cloned());
    let director = world.env.start();
    wait_until(WAIT, "the AssignTickets", || {
        !world.om.state().assigns.is_empty()
    });
    director.wait_for_log("no player will join it", WAIT);
    let accounting = final_accounting(&stop(director));
    assert_eq!(
        (accounting.assigned, accounting.released),
        (0, 1),
        "{accounting:?}"
    );
    assert_eq!(
        (
            accounting.tickets_not_found,
            accounting.orphaned_game_servers
        ),
        (4, 1)
    );
}

/// An Allocate that allocates a game server but answers only after ALLOCATE_TIMEOUT: its answer
/// is lost to the deadline. The retry finds that game server again instead of allocating a second
/// one, and the players get it.
#[test]
fn a_retry_after_a_lost_answer_recovers_the_game_server_instead_of_allocating_another() {
    let world = World::new();
    world
        .env
        .vars
        .get("ALLOCATE_TIMEOUT")
        .expect("2s in the test settings");
    world
        .allocator
        .state()
        .script
        .push_back(Reply::Hang(Duration::from_secs(3)));
    let tickets = world.players("us-east-1", 4);
    let director = world.env.start();
    wait_until(WAIT, "the match assigned", || world.all_assigned(&tickets));
    let operations = operations_address(&director);
    let match_id = world.match_of(&tickets[0]);
    {
        let allocator = world.allocator.state();
        let servers: HashSet<&str> = allocator
            .allocated
            .iter()
            .filter(|a| a.match_id == match_id)
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(
            servers.len(),
            1,
            "one game server for the match: {servers:?}"
        );
        assert_eq!(allocator.found_allocated, 1);
        let server = allocator.connection_of(&match_id).unwrap();
        let om = world.om.state();
        assert!(tickets.iter().all(|t| matches!(
            &om.ticket(t).status,
            TicketStatus::Assigned { connection, .. } if *connection == server.connection
        )));
    }
    wait_until(WAIT, "the recovery counted", || {
        let (_, metrics) = get(operations, "/metrics");
        sample_if_any(
            &metrics,
            "director_allocations_recovered_total{region=\"us-east-1\"}",
        ) == Some(1.0)
    });
    let accounting = final_accounting(&stop(director));
    assert_eq!(
        (accounting.assigned, accounting.orphaned_game_servers),
        (1, 0)
    );
}

/// Every stage draws from MATCH_DEADLINE: with an allocator that never answers and an
/// ALLOCATE_TIMEOUT longer than the deadline, the match is still released within it.
#[test]
fn a_match_is_released_within_its_match_deadline_whatever_the_attempt_timeouts() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-49");
    world.env.set_all(&[
        ("MATCH_DEADLINE", "4s"),
        ("ALLOCATE_TIMEOUT", "10s"),
        ("QUEUE_TIMEOUT", "1s"),
        ("ALLOCATE_RETRY_BUDGET", "1s"),
        ("ASSIGN_RETRY_BUDGET", "1s"),
    ]);
    world
        .allocator
        .state()
        .hanging_regions
        .insert("us-east-1".into(), Duration::from_secs(60));
    let tickets = world.players("us-east-1", 4);
    let director = world.env.start();
    wait_until(WAIT, "the match released", || world.all_released(&tickets));
    // Released tickets can be matched again at once: every match released so far counts.
    let took: Vec<Duration> = {
        let om = world.om.state();
        om.matches
            .values()
            .filter_map(|issued| Some(issued.released_at? - issued.streamed_at))
            .collect()
    };
    assert!(!took.is_empty());
    assert!(
        took.iter()
            .all(|took| *took <= Duration::from_millis(4_500)),
        "released {took:?} after they were streamed"
    );
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.released, accounting.received);
}

#[test]
fn a_stage_budget_that_does_not_fit_the_match_deadline_exits_2_before_any_call() {
    let mut world = World::new();
    world.env.set("ALLOCATE_RETRY_BUDGET", "60s");
    let mut director = world.env.start();
    let status = director.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2));
    let problem = director.lines_with("ALLOCATE_RETRY_BUDGET: ");
    assert_eq!(problem.len(), 1, "{:?}", director.log());
    assert!(problem[0].contains("is more than MATCH_DEADLINE (45s)"));
    assert!(world.om.state().fetches.is_empty());
}

/// A worker that cannot be started (here: no address space left for its stack) stops the start
/// before any fetcher runs: no match is fetched that no worker could take, and none is left pending.
///
/// Every thread asks for a 1 GiB stack and the process may map 64.5 GiB, so the spawn that fails
/// is a worker's (2 × 1,024 of them), whatever the number of threads before them, and leaves about
/// 512 MiB less the process's own mappings for everything else: no other allocation (a thread's
/// signal stack, the heap, a gRPC thread) can be the one that runs out. One malloc arena keeps the
/// process's own mappings small.
#[test]
fn a_worker_that_cannot_start_stops_the_start_before_any_fetch() {
    let mut world = World::new();
    world.env.set("ALLOCATOR_THREADS", "1024");
    world.env.set("RUST_MIN_STACK", (1u64 << 30).to_string());
    world.env.set("MALLOC_ARENA_MAX", "1");
    let tickets = world.players("us-east-1", 8);
    let address_space_kib = (64 << 20) + (512 << 10);
    let wrapper = world.env.dir.write(
        "director-with-little-address-space",
        format!(
            "#!/bin/sh\nulimit -v {address_space_kib}\nexec {} \"$@\"\n",
            world.env.binary.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    world.env.binary = wrapper;
    let mut director = world.env.start();
    let status = director.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{:?}", director.log());
    let failed = director.lines_with("Cannot start: thread alloc-");
    assert_eq!(failed.len(), 1, "{:?}", director.log());
    assert!(world.om.state().fetches.is_empty(), "no FetchMatches");
    assert!(tickets
        .iter()
        .all(|t| world.om.state().ticket(t).status == TicketStatus::Available));
}

/// A backlog whose tickets would not fit in one gRPC message (4 MiB) is released in several
/// ReleaseTickets calls: every match released, none abandoned.
#[test]
fn a_backlog_too_large_for_one_release_call_is_released_in_parts() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-49");
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
    // 1,100 matches of four 1,000-byte ticket ids: 4.4 MB of ids.
    world.om.state().ticket_id_len = 1_000;
    let tickets = world.players("us-east-1", 4 * 1_100);
    let director = world.env.start();
    wait_until(WAIT, "the backlog released", || {
        world
            .om
            .state()
            .releases
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            >= tickets.len() - 8
    });
    let biggest = world
        .om
        .state()
        .releases
        .iter()
        .map(Vec::len)
        .max()
        .unwrap();
    assert!(biggest * 1_000 < 4 << 20, "a release of {biggest} tickets");
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.abandoned, 0, "{accounting:?}");
    assert_eq!(accounting.released, accounting.received);
}

/// Forced shutdown with a slow but reachable Open Match: what is queued is released the moment
/// shutdown is forced, not after each busy worker's slow call; nothing is abandoned.
#[test]
fn a_forced_shutdown_releases_the_queue_at_once_while_workers_finish_slow_calls() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-49");
    world.env.set("ALLOCATOR_THREADS", "1");
    world.env.set("QUEUE_CAPACITY", "8");
    world.env.set("SHUTDOWN_TIMEOUT", "1s");
    world.env.set("ASSIGN_TIMEOUT", "2s");
    world.om.state().faults.slow_writes = Duration::from_millis(1_900);
    let tickets = world.players("us-east-1", 4 * 8);
    let mut director = world.env.start();
    wait_until(WAIT, "the first assignment under way", || {
        !world.om.state().assigns.is_empty()
    });
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(1 + 2 + 2));
    assert_eq!(status.code(), Some(0));
    let accounting = final_accounting(&director);
    assert_eq!(accounting.abandoned, 0, "{accounting:?}");
    assert_eq!(accounting.received, 8);
    assert!(tickets
        .iter()
        .all(|t| world.om.state().ticket(t).status != TicketStatus::Pending));
}
