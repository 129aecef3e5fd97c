//! Leader election's settings: off without a Lease, client-go's defaults, every problem named.

use std::time::Duration;

use super::{variables, with_lease, Fixture};
use crate::doubles::certs::TempDir;

#[test]
fn leader_election_is_off_without_a_lease_and_has_client_gos_defaults() {
    assert!(Fixture::new().load().unwrap().leader_election.is_none());
    let fixture = with_lease(Fixture::new()).set("POD_NAME", "director-7d9f-x2x");
    let election = fixture.load().unwrap().leader_election.unwrap();
    assert_eq!(election.lease, "director");
    assert_eq!(
        election.namespace, "games",
        "the service account's namespace"
    );
    assert_eq!(election.identity, "director-7d9f-x2x");
    let s = Duration::from_secs;
    assert_eq!(
        (
            election.lease_duration,
            election.renew_deadline,
            election.retry_period
        ),
        (s(15), s(10), s(2))
    );
    assert_eq!(election.api_server, "10.96.0.1:443");
    assert_eq!(election.token_file, fixture.dir.path().join("token"));
    let debug = format!("{election:?}");
    assert!(!debug.contains("service-account-token"), "{debug}");
    let ipv6 = with_lease(Fixture::new())
        .set("KUBERNETES_SERVICE_HOST", "fd00::1")
        .set("KUBERNETES_SERVICE_PORT", "6443")
        .set("LEADER_ELECTION_NAMESPACE", "matchmaking");
    let election = ipv6.load().unwrap().leader_election.unwrap();
    assert_eq!(election.api_server, "[fd00::1]:6443");
    assert_eq!(election.namespace, "matchmaking");
}

#[test]
fn every_leader_election_problem_is_named_at_once() {
    let empty = TempDir::new("no-service-account");
    let problems = Fixture::new()
        .set("LEADER_ELECTION_LEASE", "Director Lease")
        .set("SERVICE_ACCOUNT_DIR", &empty.path().display().to_string())
        .set("LEASE_DURATION", "10500ms")
        .set("LEASE_RENEW_DEADLINE", "11s")
        .problems();
    assert_eq!(
        variables(&problems),
        [
            "LEADER_ELECTION_LEASE",
            "LEADER_ELECTION_NAMESPACE",
            "LEASE_DURATION",
            "LEASE_DURATION",
            "KUBERNETES_SERVICE_HOST",
            "SERVICE_ACCOUNT_DIR",
            "SERVICE_ACCOUNT_DIR",
        ],
        "{problems:#?}"
    );
    let text = problems.join("\n");
    for needle in [
        "is not a whole number of seconds",
        "must be longer than LEASE_RENEW_DEADLINE (11s)",
        "namespace",
        "ca.crt",
        "token",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    let retries = with_lease(Fixture::new())
        .set("LEASE_RETRY_PERIOD", "9s")
        .problems();
    assert_eq!(
        retries,
        ["LEASE_RENEW_DEADLINE: 10s must be longer than 1.2 × LEASE_RETRY_PERIOD (9s), as in client-go: a leader gets more than one try to renew"]
    );
}
