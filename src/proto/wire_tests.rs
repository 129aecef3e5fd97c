//! Byte-level checks of our `.proto` files against hand-computed encodings of the upstream
//! field numbers and types, so that a renumbering cannot slip in.

use protobuf::Message;

use super::allocation::*;
use super::backend::*;
use super::messages::*;

fn bytes(message: &dyn Message) -> Vec<u8> {
    message.write_to_bytes().expect("encode")
}

#[test]
fn double_range_filter_max_is_field_2_and_min_is_field_3() {
    let mut filter = DoubleRangeFilter::new();
    filter.set_double_arg("a".into());
    filter.set_max(1.0);
    filter.set_min(0.5);
    filter.set_exclude(DoubleRangeFilter_Exclude::MAX);
    assert_eq!(
        bytes(&filter),
        [
            0x0A, 1, b'a', // 1: double_arg
            0x11, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F, // 2: max = 1.0 (fixed64)
            0x19, 0, 0, 0, 0, 0, 0, 0xE0, 0x3F, // 3: min = 0.5 (fixed64)
            0x20, 2, // 4: exclude = MAX
        ]
    );
}

#[test]
fn function_config_fields_and_enum_values() {
    let mut config = FunctionConfig::new();
    config.set_host("h".into());
    config.set_port(50502);
    config.set_field_type(FunctionConfig_Type::REST);
    assert_eq!(
        bytes(&config),
        [0x0A, 1, b'h', 0x10, 0xC6, 0x8A, 0x03, 0x18, 1]
    );
    assert_eq!(FunctionConfig_Type::GRPC as i32, 0);
}

#[test]
fn ticket_uses_v1_5_numbering() {
    let mut ticket = Ticket::new();
    ticket.set_id("t".into());
    ticket.mut_assignment().set_connection("c".into());
    ticket.mut_search_fields().mut_tags().push("g".into());
    ticket.mut_create_time().set_seconds(1);
    assert_eq!(
        bytes(&ticket),
        [
            0x0A, 1, b't', // 1: id
            0x1A, 3, 0x0A, 1, b'c', // 3: assignment { 1: connection }
            0x22, 3, 0x1A, 1, b'g', // 4: search_fields { 3: tags }
            0x3A, 2, 0x08, 1, // 7: create_time { 1: seconds }
        ]
    );
}

#[test]
fn pool_filter_fields() {
    let mut pool = Pool::new();
    pool.set_name("p".into());
    pool.mut_tag_present_filters().push(TagPresentFilter::new());
    pool.mut_string_equals_filters()
        .push(StringEqualsFilter::new());
    pool.mut_double_range_filters()
        .push(DoubleRangeFilter::new());
    assert_eq!(bytes(&pool), [0x0A, 1, b'p', 0x12, 0, 0x22, 0, 0x2A, 0]);
    let mut profile = MatchProfile::new();
    profile.mut_pools().push(Pool::new());
    assert_eq!(bytes(&profile), [0x1A, 0]);
}

#[test]
fn match_backfill_and_allocate_flag() {
    let mut m = Match::new();
    m.set_match_id("m".into());
    m.mut_tickets().push(Ticket::new());
    m.mut_backfill().set_generation(3);
    m.set_allocate_gameserver(true);
    assert_eq!(
        bytes(&m),
        [0x0A, 1, b'm', 0x22, 0, 0x42, 2, 0x30, 3, 0x48, 1]
    );
}

#[test]
fn assign_tickets_and_failures() {
    let mut group = AssignmentGroup::new();
    group.mut_ticket_ids().push("t".into());
    group.mut_assignment().set_connection("c".into());
    assert_eq!(bytes(&group), [0x0A, 1, b't', 0x12, 3, 0x0A, 1, b'c']);
    let mut failure = AssignmentFailure::new();
    failure.set_ticket_id("t".into());
    failure.set_cause(AssignmentFailure_Cause::TICKET_NOT_FOUND);
    assert_eq!(bytes(&failure), [0x0A, 1, b't', 0x10, 1]);
}

#[test]
fn allocation_request_fields() {
    let mut request = AllocationRequest::new();
    request.set_namespace("n".into());
    request.mut_multiClusterSetting().set_enabled(true);
    request.set_scheduling(AllocationRequest_SchedulingStrategy::Distributed);
    request
        .mut_metadata()
        .mut_annotations()
        .insert("k".into(), "v".into());
    request
        .mut_gameServerSelectors()
        .push(GameServerSelector::new());
    assert_eq!(
        bytes(&request),
        [
            0x0A, 1, b'n', // 1: namespace
            0x12, 2, 0x08, 1, // 2: multiClusterSetting { 1: enabled }
            0x28, 1, // 5: scheduling = Distributed
            0x3A, 8, 0x12, 6, 0x0A, 1, b'k', 0x12, 1, b'v', // 7: metadata { 2: annotations }
            0x42, 0, // 8: gameServerSelectors
        ]
    );
}

#[test]
fn allocation_response_fields() {
    let mut port = AllocationResponse_GameServerStatusPort::new();
    port.set_name("d".into());
    port.set_port(7777);
    let mut response = AllocationResponse::new();
    response.set_gameServerName("g".into());
    response.mut_ports().push(port);
    response.set_address("a".into());
    response.set_nodeName("n".into());
    assert_eq!(
        bytes(&response),
        [
            0x12, 1, b'g', // 2: gameServerName
            0x1A, 6, 0x0A, 1, b'd', 0x10, 0xE1, 0x3C, // 3: ports { name, port = 7777 }
            0x22, 1, b'a', // 4: address
            0x2A, 1, b'n', // 5: nodeName
        ]
    );
}
