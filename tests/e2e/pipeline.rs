//! End-to-end tests: the real `director` binary against in-process gRPC doubles of the Open Match
//! backend and the Agones allocator (mTLS with certificates generated here).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{final_accounting, stop, wait_until, World, WAIT};
use agones_openmatch_director::allocator::{
    match_label_value, MATCH_ID_ANNOTATION, MATCH_LABEL, PROFILE_LABEL,
};
use agones_openmatch_director::doubles::certs::{TestCa, Usage};
use agones_openmatch_director::doubles::openmatch::{FakeOpenMatch, TicketStatus};
use agones_openmatch_director::doubles::tls::ServerTls;
use agones_openmatch_director::proto::allocation::{
    AllocationRequest, CounterAction, CounterSelector, GameServerSelector,
    GameServerSelector_GameServerState, MultiClusterSetting, Priority, Priority_Type,
};
use agones_openmatch_director::proto::backend::FunctionConfig_Type;
use agones_openmatch_director::proto::messages::DoubleRangeFilter_Exclude;
use grpcio::RpcStatusCode;
use protobuf::well_known_types::{Int64Value, StringValue};

#[test]
fn assigns_every_ticket_once_in_its_region_then_drains_on_sigterm() {
    let world = World::new();
    let east1 = world.players("us-east-1", 8);
    let east2 = world.players("us-east-2", 8);
    let director = world.env.start();
    world.wait_assigned(16);

    let om = world.om.state();
    let agones = world.allocator.state();
    for (region, tickets) in [("us-east-1", &east1), ("us-east-2", &east2)] {
        for id in tickets.iter() {
            let (match_id, _) = om
                .matches
                .iter()
                .find(|(_, m)| m.ticket_ids.contains(id))
                .expect("ticket was matched");
            let server = agones
                .connection_of(match_id)
                .expect("server allocated for match");
            assert_eq!(
                server.region, region,
                "match {match_id} allocated in its profile's region"
            );
            assert_eq!(
                om.ticket(id).status,
                TicketStatus::Assigned {
                    connection: server.connection.clone(),
                    times: 1
                }
            );
        }
    }
    assert_eq!(om.matches.len(), 4);
    assert_eq!(agones.requests.len(), 4, "one allocation per match");
    for request in &agones.requests {
        assert_eq!(request.get_namespace(), "game-servers");
        assert!(request.get_multiClusterSetting().get_enabled());
        let selectors = request.get_gameServerSelectors();
        assert_eq!(selectors.len(), 1);
        let region = &selectors[0].get_matchLabels()["region"];
        let match_id = &request.get_metadata().get_annotations()[MATCH_ID_ANNOTATION];
        let profile = &om.matches[match_id].profile;
        assert_eq!(profile, &format!("latency-{region}-0-49"));
        assert_eq!(&request.get_metadata().get_labels()[PROFILE_LABEL], profile);
    }
    let profiles: HashSet<&str> = om
        .fetches
        .iter()
        .map(|f| f.get_profile().get_name())
        .collect();
    assert_eq!(
        profiles,
        HashSet::from([
            "latency-us-east-1-0-49",
            "latency-us-east-1-50-99",
            "latency-us-east-2-0-49",
            "latency-us-east-2-50-99"
        ])
    );
    for fetch in &om.fetches {
        let config = fetch.get_config();
        assert_eq!((config.get_host(), config.get_port()), ("mmf.test", 50502));
        assert_eq!(config.get_field_type(), FunctionConfig_Type::GRPC);
        let pool = &fetch.get_profile().get_pools()[0];
        let range = &pool.get_double_range_filters()[0];
        let name = fetch.get_profile().get_name();
        assert!(name.starts_with(&format!("{}-", range.get_double_arg())));
        // Band A-B filters A <= latency < B + 1.
        let band = format!("-{}-{}", range.get_min(), range.get_max() - 1.0);
        assert!(name.ends_with(&band), "{name} {range:?}");
        assert_eq!(range.get_exclude(), DoubleRangeFilter_Exclude::MAX);
        assert_eq!(pool.get_tag_present_filters()[0].get_tag(), "mode.session");
    }
    assert!(om.releases.is_empty());
    drop((om, agones));

    // The worker logs its assignment just after Open Match has recorded it.
    wait_until(WAIT, "four Assigned server lines", || {
        director.lines_with("Assigned server 127.0.0.1:").len() >= 4
    });
    assert_eq!(director.lines_with("Assigned server 127.0.0.1:").len(), 4);
    let director = stop(director);
    let accounting = final_accounting(&director);
    assert_eq!((accounting.received, accounting.assigned), (4, 4));
    assert_eq!(world.om.state().count(|s| *s == TicketStatus::Pending), 0);
}

#[test]
fn failed_allocation_releases_tickets_and_the_director_keeps_running() {
    let world = World::new();
    world
        .allocator
        .state()
        .failing_regions
        .insert("us-east-2".into(), RpcStatusCode::INVALID_ARGUMENT);
    let east1 = world.players("us-east-1", 4);
    let east2 = world.players("us-east-2", 4);
    let mut director = world.env.start();
    world.wait_assigned(4);
    wait_until(WAIT, "the us-east-2 tickets to be released", || {
        let released = world.om.state().released_ids();
        east2.iter().all(|id| released.contains(id))
    });
    assert!(director.is_running());
    assert!(east1.iter().all(|id| matches!(
        world.om.state().ticket(id).status,
        TicketStatus::Assigned { .. }
    )));

    world.allocator.state().failing_regions.clear();
    world.wait_assigned(8);
    let director = stop(director);
    let accounting = final_accounting(&director);
    assert_eq!(accounting.assigned, 2);
    assert!(accounting.released >= 1);
    assert_eq!(accounting.abandoned, 0);
}

#[test]
fn client_certificate_the_allocator_does_not_trust_releases_tickets_without_crashing() {
    let mut world = World::new();
    let stranger = TestCa::new("not the allocator's client CA").issue(&["director"], Usage::Client);
    world.env.dir.write("tls.crt", stranger.cert_pem);
    world.env.dir.write("tls.key", stranger.key_pem);
    world.env.set("ALLOCATE_RETRY_BUDGET", "1s");
    let tickets = world.players("us-east-1", 4);
    let mut director = world.env.start();
    wait_until(WAIT, "the tickets to be released", || {
        let released = world.om.state().released_ids();
        tickets.iter().all(|id| released.contains(id))
    });
    assert!(director.is_running());
    assert!(
        world.allocator.state().requests.is_empty(),
        "no request got past the handshake"
    );
    assert_eq!(world.om.state().assigned(), 0);
    director.wait_for_log("UNAVAILABLE", WAIT);
    stop(director);
}

#[test]
fn bad_configuration_exits_2_naming_every_variable_before_any_call() {
    let mut world = World::new();
    world.env.set("INTERVAL", "soon");
    world.env.set("REGIONS", "");
    world.env.set("AGONES_CLIENT_KEY", "/nonexistent/tls.key");
    world.env.set("RANGES", "0-50,40-99");
    let mut director = world.env.start();
    let status = director.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    let log = director.log().join("\n");
    for expected in [
        "AGONES_CLIENT_KEY: cannot read /nonexistent/tls.key",
        "REGIONS: is empty",
        "RANGES: bands 0-50 and 40-99 overlap",
        "INTERVAL: is not a duration",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    assert!(world.om.state().fetches.is_empty());
    assert!(world.allocator.state().requests.is_empty());
}

#[test]
fn allocator_certificate_is_verified_against_agones_tls_server_name() {
    let mut world = World::with(
        FakeOpenMatch::start(),
        &["agones-allocator.agones-system.svc"],
    );
    world.env.set("ALLOCATE_RETRY_BUDGET", "1s");
    world.env.set("REGIONS", "us-east-1");
    let tickets = world.om.add_players(&["us-east-1"], "us-east-1", 10.0, 4);

    let wrong_name = world.env.start();
    wait_until(
        WAIT,
        "tickets released: 127.0.0.1 is not in the certificate",
        || world.all_released(&tickets),
    );
    stop(wrong_name);
    assert!(world.allocator.state().requests.is_empty());

    world.env.set(
        "AGONES_TLS_SERVER_NAME",
        "agones-allocator.agones-system.svc",
    );
    let director = world.env.start();
    wait_until(WAIT, "tickets assigned", || world.all_assigned(&tickets));
    director.wait_for_log("server name agones-allocator.agones-system.svc", WAIT);
    stop(director);
}

#[test]
fn open_match_over_mutual_tls() {
    let om_ca = TestCa::new("open-match CA");
    let om_clients = TestCa::new("open-match client CA");
    let om = FakeOpenMatch::start_with(Some(ServerTls {
        client_ca_pem: Some(om_clients.pem()),
        server: om_ca.issue(&["127.0.0.1"], Usage::Server),
    }));
    let mut world = World::with(om, &["127.0.0.1"]);
    let client = om_clients.issue(&["director"], Usage::Client);
    for (var, file, contents) in [
        ("OPENMATCH_CA_CERT", "om-ca.crt", om_ca.pem()),
        ("OPENMATCH_CLIENT_CERT", "om.crt", client.cert_pem),
        ("OPENMATCH_CLIENT_KEY", "om.key", client.key_pem),
    ] {
        let path = world.env.dir.write(file, contents);
        world.env.set(var, path.display().to_string());
    }
    let tickets = world.players("us-east-2", 4);
    let director = world.env.start();
    wait_until(WAIT, "tickets assigned", || world.all_assigned(&tickets));
    director.wait_for_log("(mTLS), match function", WAIT);
    stop(director);
}

/// ALLOCATION_REQUEST_FILE, high density: Allocated game servers with a free room first, the
/// fullest first, one room taken per match. The allocator double receives exactly that request,
/// merged with the region, namespace, multi-cluster flag and the match's metadata; the same game
/// server comes back for every match, and every match is assigned it.
#[test]
fn the_allocation_request_file_shapes_every_request_and_one_server_hosts_many_matches() {
    let mut world = World::new();
    let file = world.env.dir.write(
        "allocation-request.json",
        r#"{
            "gameServerSelectors": [
                {"gameServerState": "ALLOCATED", "counters": {"rooms": {"minAvailable": "1"}}},
                {"gameServerState": "READY"}
            ],
            "priorities": [{"type": "Counter", "key": "rooms", "order": "Ascending"}],
            "counters": {"rooms": {"action": "Increment", "amount": "1"}}
        }"#,
    );
    world
        .env
        .set("ALLOCATION_REQUEST_FILE", file.display().to_string());
    world.allocator.state().one_game_server = true;
    let tickets = world.players("us-east-1", 12);
    let director = world.env.start();
    wait_until(WAIT, "every ticket assigned", || {
        world.all_assigned(&tickets)
    });
    stop(director);

    let state = world.allocator.state();
    assert_eq!(state.requests.len(), 3);
    for received in &state.requests {
        let match_id = received.get_metadata().get_annotations()[MATCH_ID_ANNOTATION].clone();
        assert_eq!(received, &high_density_request(&match_id), "{received:#?}");
    }
    let om = world.om.state();
    for ticket in &tickets {
        assert_eq!(
            om.ticket(ticket).status,
            TicketStatus::Assigned {
                connection: "127.0.0.1:7001".into(),
                times: 1
            }
        );
    }
}

/// What the allocator must receive for `match_id` of profile latency-us-east-1-0-49, built here
/// field by field, independently of the Director's JSON reader.
fn high_density_request(match_id: &str) -> AllocationRequest {
    let mut request = AllocationRequest::new();
    request.set_namespace("game-servers".into());
    let mut multicluster = MultiClusterSetting::new();
    multicluster.set_enabled(true);
    request.set_multiClusterSetting(multicluster);
    let mut allocated = GameServerSelector::new();
    allocated.set_gameServerState(GameServerSelector_GameServerState::ALLOCATED);
    let mut free_room = CounterSelector::new();
    free_room.set_minAvailable(1);
    allocated.mut_counters().insert("rooms".into(), free_room);
    let ready = GameServerSelector::new();
    for mut selector in [allocated, ready] {
        selector
            .mut_matchLabels()
            .insert("region".into(), "us-east-1".into());
        request.mut_gameServerSelectors().push(selector);
    }
    let mut priority = Priority::new();
    priority.set_field_type(Priority_Type::Counter);
    priority.set_key("rooms".into());
    request.mut_priorities().push(priority);
    let mut take_a_room = CounterAction::new();
    let mut increment = StringValue::new();
    increment.set_value("Increment".into());
    take_a_room.set_action(increment);
    let mut one = Int64Value::new();
    one.set_value(1);
    take_a_room.set_amount(one);
    request.mut_counters().insert("rooms".into(), take_a_room);
    let metadata = request.mut_metadata();
    metadata
        .mut_annotations()
        .insert(MATCH_ID_ANNOTATION.into(), match_id.into());
    metadata
        .mut_labels()
        .insert(PROFILE_LABEL.into(), "latency-us-east-1-0-49".into());
    metadata
        .mut_labels()
        .insert(MATCH_LABEL.into(), match_label_value(match_id));
    request
}

/// Clients report fractional latencies: one between two bands (24.5 ms with 0-24,25-49) belongs to
/// the lower band, and every player with a latency in the configured range is matched.
#[test]
fn a_latency_between_two_bands_is_matched() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-1");
    world.env.set("RANGES", "0-24,25-49");
    let between = world.om.add_players(&["us-east-1"], "us-east-1", 24.5, 4);
    let at_top = world.om.add_players(&["us-east-1"], "us-east-1", 49.9, 4);
    let director = world.env.start();
    wait_until(WAIT, "both groups assigned", || {
        world.all_assigned(&between) && world.all_assigned(&at_top)
    });
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.assigned, 2);
    assert_eq!(world.match_of(&between[0]), world.match_of(&between[3]));
    assert!(world
        .match_of(&between[0])
        .starts_with("profile-latency-us-east-1-0-24-"));
}
