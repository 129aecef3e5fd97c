//! Backfill, end to end: in one stream, a match that tops up a running game's backfill
//! (`allocate_gameserver = false`), a match that creates a new backfill (`allocate_gameserver =
//! true`) and a plain match; and a new backfill whose allocation fails.

use crate::common::{
    final_accounting, get, operations_address, sample_if_any, stop, wait_until, World, WAIT,
};
use agones_openmatch_director::allocator::MATCH_ID_ANNOTATION;
use agones_openmatch_director::config::DEFAULT_BACKFILL_ID_ANNOTATION;
use agones_openmatch_director::doubles::agones::Reply;
use agones_openmatch_director::doubles::openmatch::{BackfillRecord, MatchKind, TicketStatus};
use grpcio::RpcStatusCode;

/// The running game's backfill and its game server.
const RUNNING: &str = "backfill-running";
const RUNNING_SERVER: &str = "10.1.2.3:7777";

/// A one-region, one-band Director whose next matches are of `kinds`, with a running game whose
/// backfill is `RUNNING`.
fn world_with(kinds: &[MatchKind]) -> World {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-49");
    world.env.set(
        "RUST_LOG",
        "info,agones_openmatch_director::pipeline=debug,grpcio=warn",
    );
    let mut om = world.om.state();
    om.backfills.insert(
        RUNNING.into(),
        BackfillRecord {
            generation: 3,
            created_by: "an-earlier-match".into(),
            connection: Some(RUNNING_SERVER.into()),
            pending: Vec::new(),
        },
    );
    om.kinds.extend(kinds.iter().cloned());
    drop(om);
    world
}

/// The id of the match the double streamed with `backfill` (and `allocate_gameserver`), or
/// without one.
fn match_with(world: &World, backfill: Option<&str>, allocate: bool) -> (String, Vec<String>) {
    let om = world.om.state();
    let (id, m) = om
        .matches
        .iter()
        .find(|(_, m)| m.backfill.as_deref() == backfill && m.allocate_gameserver == allocate)
        .expect("the double streamed such a match");
    (id.clone(), m.ticket_ids.clone())
}

#[test]
fn a_new_backfill_gets_a_game_server_with_its_id_and_a_running_one_is_left_alone() {
    let kinds = [
        MatchKind::TopUp(RUNNING.into()),
        MatchKind::NewBackfill,
        MatchKind::Plain,
    ];
    let world = world_with(&kinds);
    world.players("us-east-1", 12);
    let director = world.env.start();
    world.wait_assigned(8);
    let (top_up, top_up_tickets) = match_with(&world, Some(RUNNING), false);
    let (new, new_tickets) = match_with(&world, Some("backfill-1"), true);
    let (plain, _) = match_with(&world, None, false);
    director.wait_for_log(&format!("Match {top_up} tops up backfill {RUNNING}"), WAIT);
    let operations = operations_address(&director);
    let outcomes = || {
        let (_, metrics) = get(operations, "/metrics");
        let outcome = |label: &str| {
            sample_if_any(
                &metrics,
                &format!("director_matches_total{{outcome=\"{label}\"}}"),
            )
        };
        (outcome("backfill"), outcome("assigned"))
    };
    wait_until(WAIT, "the outcomes counted", || {
        outcomes() == (Some(1.0), Some(2.0))
    });
    let director = stop(director);

    let totals = final_accounting(&director);
    assert_eq!(
        (totals.received, totals.assigned, totals.released),
        (3, 2, 0)
    );
    assert_eq!((totals.backfill, totals.abandoned), (1, 0));

    let allocator = world.allocator.state();
    let annotation_of = |match_id: &str| {
        let request = allocator
            .requests
            .iter()
            .find(|r| r.get_metadata().get_annotations()[MATCH_ID_ANNOTATION] == match_id)
            .unwrap_or_else(|| panic!("an Allocate for {match_id}"));
        request
            .get_metadata()
            .get_annotations()
            .get(DEFAULT_BACKFILL_ID_ANNOTATION)
            .cloned()
    };
    assert_eq!(annotation_of(&new), Some("backfill-1".to_string()));
    assert_eq!(annotation_of(&plain), None);
    assert_eq!(allocator.requests.len(), 2, "no Allocate for the top-up");
    let new_server = allocator.connection_of(&new).expect("allocated").clone();
    drop(allocator);

    let om = world.om.state();
    let named = |ids: &[String]| top_up_tickets.iter().any(|t| ids.contains(t));
    let assigns = om.assigns.iter().flat_map(|a| a.get_assignments());
    assert!(!assigns.into_iter().any(|g| named(g.get_ticket_ids())));
    assert!(!om.releases.iter().any(|r| named(r)));
    assert!(top_up_tickets
        .iter()
        .all(|t| om.ticket(t).status == TicketStatus::Pending));
    assert!(new_tickets.iter().all(|t| matches!(
        &om.ticket(t).status,
        TicketStatus::Assigned { connection, .. } if *connection == new_server.connection
    )));
    drop(om);

    // The running game's server acknowledges its backfill: Open Match assigns the top-up.
    assert!(world.om.acknowledge_backfill(RUNNING, RUNNING_SERVER));
    // The new game's server reads its backfill id and acknowledges it too.
    world.acknowledge_backfills();
    let om = world.om.state();
    assert!(top_up_tickets.iter().all(|t| matches!(
        &om.ticket(t).status,
        TicketStatus::Assigned { connection, .. } if connection == RUNNING_SERVER
    )));
    assert_eq!(
        om.backfills["backfill-1"].connection.as_deref(),
        Some(new_server.connection.as_str())
    );
}

#[test]
fn a_new_backfill_whose_allocation_fails_is_released() {
    let world = world_with(&[MatchKind::NewBackfill]);
    world
        .allocator
        .state()
        .script
        .push_back(Reply::Fail(RpcStatusCode::INVALID_ARGUMENT));
    let tickets = world.players("us-east-1", 4);
    let director = world.env.start();
    wait_until(WAIT, "the backfill's tickets released", || {
        world.all_released(&tickets)
    });
    let totals = final_accounting(&stop(director));
    assert_eq!(
        (totals.received, totals.released, totals.backfill),
        (1, 1, 0)
    );
}
