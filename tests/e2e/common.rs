//! What the scenario files share: the doubles' world and launcher, and the helpers that more
//! than one group of scenarios uses (the guidance's mapping files, the original director's
//! `/app` layout).

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use agones_openmatch_director::doubles::certs::{SecretVolume, TestCa, Usage};
pub use agones_openmatch_director::doubles::director::{
    get, sample, sample_if_any, Director, DirectorEnv,
};
use agones_openmatch_director::doubles::openmatch::{FakeOpenMatch, TicketStatus};
use agones_openmatch_director::doubles::tls::ServerTls;
pub use agones_openmatch_director::doubles::wait::wait_until;
pub use agones_openmatch_director::doubles::world::{final_accounting, stop, World, REGIONS, WAIT};

/// The address of the Director's operations listener, from its start-up log.
pub fn operations_address(director: &Director) -> std::net::SocketAddr {
    agones_openmatch_director::doubles::director::operations_address(director, WAIT)
}

/// Game servers 1..=`servers` of the double (InternalIP 10.0.0.1, port 7000 + n), each mapped to
/// accelerator port `base + n`, except those in `missing`.
pub fn mapping_json(servers: u16, base: u16, missing: &[u16]) -> String {
    let entries: Vec<String> = (1..=servers)
        .filter(|n| !missing.contains(n))
        .map(|n| format!("  \"10.0.0.1:{}\": {}", 7000 + n, base + n))
        .collect();
    // Pretty-printed, the way the guidance's script writes it (`jq -s 'from_entries'`).
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

pub fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// The guidance's ConfigMap, two regions: `mapping1.gz`, `accelerator1`, `mapping2.gz`,
/// `accelerator2`; region i's ports start at `base + 1000 i`.
pub fn guidance_configmap(base: u16, missing: &[u16]) -> Vec<(String, Vec<u8>)> {
    (1..=2)
        .flat_map(|i| {
            [
                (
                    format!("mapping{i}.gz"),
                    gzip(&mapping_json(60, base + 1000 * i, missing)),
                ),
                (
                    format!("accelerator{i}"),
                    format!("a{i}.awsglobalaccelerator.com\n").into_bytes(),
                ),
            ]
        })
        .collect()
}

pub fn publish(volume: &mut SecretVolume, files: &[(String, Vec<u8>)]) {
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    volume.publish(&files);
}

/// The game server number the double allocated for `ticket`'s match.
pub fn server_number(world: &World, ticket: &str) -> u16 {
    let match_id = world.match_of(ticket);
    let allocator = world.allocator.state();
    let allocated = allocator.connection_of(&match_id).expect("allocated");
    allocated
        .connection
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap()
        - 7000
}

pub fn connection(world: &World, ticket: &str) -> String {
    match &world.om.state().ticket(ticket).status {
        TicketStatus::Assigned { connection, .. } => connection.clone(),
        other => panic!("{ticket} is {other:?}"),
    }
}

/// Region i's (1-based) accelerator address for `ticket`'s game server.
pub fn expected(world: &World, ticket: &str, region: u16, base: u16) -> String {
    let n = server_number(world, ticket);
    format!(
        "a{region}.awsglobalaccelerator.com:{}",
        base + 1000 * region + n
    )
}

/// The original manifest's command line, with the doubles' addresses.
pub fn original_args(world: &World) -> Vec<String> {
    let om_port = world.om.port.to_string();
    let allocator_port = world.allocator.port.to_string();
    [
        "-backendAddr",
        "127.0.0.1",
        "-backendPort",
        &om_port,
        "-functionAddr",
        "agones-openmatch-mmf.agones-openmatch.svc.cluster.local",
        "-functionPort",
        "50502",
        "-allocatorAddr",
        "127.0.0.1",
        "-allocatorPort",
        &allocator_port,
        "-certFile",
        "tls.crt",
        "-keyFile",
        "tls.key",
        "-caFile",
        "ca.crt",
        "-namespace",
        "agones-system",
        "-regions",
        "us-east-1,us-east-2",
        "-ranges",
        "0-24,25-49,50-74,74-99,100-9999",
        "-interval",
        "1",
        "-multicluster",
    ]
    .map(String::from)
    .to_vec()
}

fn write_dir(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
}

/// The doubles (Open Match over mTLS), and a working directory laid out like the original
/// image's `/app`.
pub struct OriginalApp {
    pub world: World,
    pub app: PathBuf,
}

/// The directories the original's manifest mounts under `/app`.
pub const MOUNTED: [&str; 3] = ["agones-tls", "openmatch-tls", "global-accelerator-mapping"];

impl OriginalApp {
    pub fn new() -> OriginalApp {
        let om_ca = TestCa::new("open-match CA");
        let om_clients = TestCa::new("open-match client CA");
        let om = FakeOpenMatch::start_with(Some(ServerTls {
            client_ca_pem: Some(om_clients.pem()),
            server: om_ca.issue(&["127.0.0.1"], Usage::Server),
        }));
        let world = World::with(om, &["127.0.0.1"]);
        let app = world.env.dir.path().join("app");
        let agones_client = world.pki.client();
        write_dir(
            &app.join("agones-tls"),
            &[
                ("tls.crt", agones_client.cert_pem),
                ("tls.key", agones_client.key_pem),
                ("ca.crt", world.pki.server_ca.pem()),
            ],
        );
        let om_client = om_clients.issue(&["director"], Usage::Client);
        write_dir(
            &app.join("openmatch-tls"),
            &[
                ("tls.crt", om_client.cert_pem),
                ("tls.key", om_client.key_pem),
                ("ca.crt", om_ca.pem()),
            ],
        );
        let mapping_dir = app.join("global-accelerator-mapping");
        std::fs::create_dir(&mapping_dir).unwrap();
        let mut volume = SecretVolume {
            dir: &mapping_dir,
            version: 0,
        };
        publish(&mut volume, &guidance_configmap(40_000, &[]));
        OriginalApp { world, app }
    }

    /// Runs players of both regions through `director` (started by `start` once they wait),
    /// checks that every one got its region's accelerator and that the allocator saw the
    /// original's settings, then stops it.
    pub fn assigns_through_the_accelerators(&self, start: impl FnOnce() -> Director) -> Director {
        let world = &self.world;
        let east1 = world.players("us-east-1", 8);
        let east2 = world.players("us-east-2", 8);
        let director = start();
        wait_until(WAIT, "every ticket assigned", || {
            world.all_assigned(&east1) && world.all_assigned(&east2)
        });
        for (region, tickets) in [(1, &east1), (2, &east2)] {
            for ticket in tickets {
                assert_eq!(
                    connection(world, ticket),
                    expected(world, ticket, region, 40_000)
                );
            }
        }
        for request in &world.allocator.state().requests {
            assert_eq!(request.get_namespace(), "agones-system");
            assert!(request.get_multiClusterSetting().get_enabled());
        }
        stop(director)
    }
}
