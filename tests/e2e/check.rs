//! `director check` against the doubles: a good setup, each way mTLS to the allocator fails, and
//! the Lease's access with leader election.

use std::net::TcpListener;

use crate::common::{stop, wait_until, World, WAIT};
use agones_openmatch_director::doubles::apiserver::FakeApiServer;
use agones_openmatch_director::doubles::certs::{TestCa, Usage};
use agones_openmatch_director::doubles::openmatch::FakeOpenMatch;

/// Runs `director check`; expects exit code `code` and every text of `expected` in the report.
fn check_reports(world: &World, code: i32, expected: &[&str]) -> String {
    let (exit, report) = world.env.check();
    assert_eq!(exit, Some(code), "{report}");
    for text in expected {
        assert!(report.contains(text), "missing {text:?} in:\n{report}");
    }
    report
}

fn assert_usable_with(world: &World, expected: &[&str]) {
    check_reports(world, 0, expected);
}

fn assert_fails_with(world: &World, expected: &[&str]) -> String {
    let report = check_reports(world, 1, expected);
    assert!(report.contains("Result: NOT usable"));
    report
}

#[test]
fn good_setup_is_usable() {
    let world = World::new();
    assert_usable_with(
        &world,
        &[
            "Configuration: valid (2 regions × 2 bands)",
        "ok    AGONES_CA_CERT ",
        "ok    AGONES_CLIENT_CERT ",
        "ok    TCP connection to 127.0.0.1:",
        "ok    server certificate verified against AGONES_CA_CERT; valid for: localhost, 127.0.0.1",
        "handshake completed",
        "ok    the server asked for our client certificate and accepted it",
        "ok    the backend answers",
            "Result: everything is usable.",
        ],
    );
    assert!(
        world.allocator.state().requests.is_empty(),
        "the check allocates nothing"
    );
}

#[test]
fn wrong_ca_is_an_unknown_issuer() {
    let world = World::new();
    world
        .env
        .dir
        .write("ca.crt", TestCa::new("some other CA").pem());
    assert_fails_with(
        &world,
        &["FAIL  the server's certificate is not signed by a CA in AGONES_CA_CERT (unknown issuer); it is valid for: localhost, 127.0.0.1"],
    );
}

#[test]
fn server_certificate_without_the_dialled_name_names_its_names() {
    let world = World::with(
        FakeOpenMatch::start(),
        &["agones-allocator.agones-system.svc", "allocator"],
    );
    let report = assert_fails_with(
        &world,
        &[
            "the server's certificate is not valid for the name \"127.0.0.1\"",
            "it is valid for: agones-allocator.agones-system.svc, allocator",
            "set AGONES_TLS_SERVER_NAME to one of them",
        ],
    );
    assert!(
        !report.contains("rejected our client certificate"),
        "{report}"
    );
}

#[test]
fn client_certificate_the_server_does_not_trust_is_rejected() {
    let world = World::new();
    let stranger = TestCa::new("not the allocator's client CA").issue(&["director"], Usage::Client);
    world.env.dir.write("tls.crt", stranger.cert_pem);
    world.env.dir.write("tls.key", stranger.key_pem);
    assert_fails_with(
        &world,
        &["FAIL  the server rejected our client certificate"],
    );
}

#[test]
fn expired_client_certificate_is_reported() {
    let pki_world = World::new();
    let expired = pki_world
        .pki
        .client_ca
        .issue_expired(&["director"], Usage::Client);
    pki_world.env.dir.write("tls.crt", expired.cert_pem);
    pki_world.env.dir.write("tls.key", expired.key_pem);
    assert_fails_with(
        &pki_world,
        &[
            "FAIL  AGONES_CLIENT_CERT ",
            "EXPIRED — valid from 2019-01-01 00:00:00 UTC until 2020-01-01 00:00:00 UTC",
            "FAIL  the server rejected our client certificate",
        ],
    );
}

#[test]
fn unreachable_allocator_is_reported() {
    let mut world = World::new();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    world.env.set("AGONES_ALLOCATOR_PORT", closed.to_string());
    assert_fails_with(
        &world,
        &[
            &format!("FAIL  cannot connect to 127.0.0.1:{closed}"),
            "Connection refused",
        ],
    );
}

/// An allocator that completes the mTLS handshake with a trusted client certificate, then never
/// answers: hung, not rejecting. Serves one connection; returns its port.
fn hung_allocator(world: &World) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let server = world.pki.server_ca.issue(&["127.0.0.1"], Usage::Server);
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots
        .add(CertificateDer::from_pem_slice(world.pki.client_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut tls = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        while tls.is_handshaking() {
            if tls.complete_io(&mut tcp).is_err() {
                return;
            }
        }
        // Hung: hold the connection, read nothing more, answer nothing, until the client leaves.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    });
    port
}

#[test]
fn a_server_that_never_answers_is_reported_as_hung_not_as_a_rejection() {
    let mut world = World::new();
    let port = hung_allocator(&world);
    world.env.set("AGONES_ALLOCATOR_PORT", port.to_string());
    let report = assert_fails_with(&world, &["the server sent nothing within 5s", "hung"]);
    assert!(
        !report.contains("rejected our client certificate"),
        "{report}"
    );
}

/// A world with leader election on Lease `director` of a fresh API-server double that accepts
/// `token-1`.
fn world_with_lease() -> (World, FakeApiServer) {
    let mut world = World::new();
    let api = FakeApiServer::start("token-1");
    world.env.elect_on(&api, "director", "token-1");
    (world, api)
}

#[test]
fn the_lease_may_be_read_created_and_updated_in_dry_runs_only() {
    let (world, api) = world_with_lease();
    assert_usable_with(
        &world,
        &[
            "Leader election: Lease games/director as ",
            "ok    may read the Lease (it does not exist yet)",
            "ok    may create the Lease (dry run)",
        ],
    );
    assert!(api.state().leases.is_empty(), "a dry run stores nothing");
    let dry_runs = api
        .state()
        .requests
        .iter()
        .filter(|r| r.path.ends_with("?dryRun=All"))
        .count();
    assert_eq!(dry_runs, 1);
    let director = world.env.start();
    wait_until(WAIT, "the director to hold the Lease", || {
        !api.state().leases.is_empty()
    });
    stop(director);
    assert_usable_with(&world, &["ok    may update the Lease (dry run)"]);
    assert_eq!(api.state().holder("games", "director").as_deref(), Some(""));
}

#[test]
fn a_missing_lease_permission_names_the_rbac_rule() {
    let (world, api) = world_with_lease();
    api.state().verbs = vec!["get".into()];
    assert_fails_with(
        &world,
        &[
            "ok    may read the Lease",
            "FAIL  create is forbidden: ",
            "needs a Role with apiGroups [coordination.k8s.io], resources [leases], verbs [get, create, update] in namespace \"games\" (LEADER_ELECTION_NAMESPACE)",
        ],
    );
}

#[test]
fn an_untrusted_api_server_or_a_refused_token_names_the_setting() {
    let (mut world, api) = world_with_lease();
    api.state().tokens = vec!["another-token".into()];
    assert_fails_with(
        &world,
        &["FAIL  the API server rejects the token in SERVICE_ACCOUNT_DIR"],
    );
    let other = FakeApiServer::start("token-1");
    world
        .env
        .set("KUBERNETES_SERVICE_PORT", other.port.to_string());
    assert_fails_with(
        &world,
        &["FAIL  cannot reach the API server at 127.0.0.1:", "(KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT), or it is not trusted by the ca.crt of SERVICE_ACCOUNT_DIR", "invalid peer certificate"],
    );
}
