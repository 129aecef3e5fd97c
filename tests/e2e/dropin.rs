//! A drop-in for the guidance's director: the binary started exactly as the original's manifest
//! starts it (settings as Go flags, a bare `-multicluster`, its overlapping RANGES), in a working
//! directory laid out like its image's `/app`: `agones-tls/`, `openmatch-tls/` and
//! `global-accelerator-mapping/` (a ConfigMap behind a `..data` symlink).

use std::path::{Path, PathBuf};

use crate::accelerator::{connection, expected, guidance_configmap, publish};
use crate::director::{wait_until, Director, DirectorEnv};
use crate::world::{stop, World, WAIT};
use agones_openmatch_director::doubles::certs::{SecretVolume, TestCa, Usage};
use agones_openmatch_director::doubles::openmatch::FakeOpenMatch;
use agones_openmatch_director::doubles::tls::ServerTls;

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

#[test]
fn the_original_manifest_runs_with_only_the_image_changed() {
    let original = OriginalApp::new();
    let args = original_args(&original.world);
    let vars = [
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "info,grpcio=warn"),
    ];
    let director = original
        .assigns_through_the_accelerators(|| DirectorEnv::start_in(&original.app, &args, &vars));
    let started = director.lines_with("Started with the original director's flags");
    assert_eq!(started.len(), 1, "{:#?}", director.log());
    for file in [
        "Agones client certificate agones-tls/tls.crt, key agones-tls/tls.key, CA agones-tls/ca.crt",
        "Open Match mTLS from openmatch-tls/{tls.crt,tls.key,ca.crt}",
        "Global Accelerator mapping from global-accelerator-mapping/",
    ] {
        assert!(started[0].contains(file), "{file:?} in {}", started[0]);
    }
    let overlap = director.lines_with("RANGES (-ranges): bands 50-74 and 74-99 overlap");
    assert_eq!(overlap.len(), 1, "{:#?}", director.log());
    assert!(overlap[0].contains("WARN"));

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_director"))
        .current_dir(&original.app)
        .arg("check")
        .args(&args)
        .env_clear()
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{report}");
    assert!(
        report.contains("server certificate verified against AGONES_CA_CERT"),
        "{report}"
    );
}

#[test]
fn a_bad_command_line_is_a_usage_error_listing_the_flags() {
    let world = World::new();
    for (args, problem) in [
        (vec!["-backendAdr", "x"], "unknown flag \"-backendAdr\""),
        (vec!["-regions"], "flag -regions needs a value"),
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let mut director = DirectorEnv::start_in(world.env.dir.path(), &args, &[]);
        assert_eq!(director.wait_exit(WAIT).code(), Some(2));
        let log = director.log().join("\n");
        assert!(log.contains(problem), "{log}");
        assert!(log.contains("accepted flags"), "{log}");
        assert!(log.contains("-allocatorAddr VALUE"), "{log}");
    }
    assert_eq!(world.om.state().fetches.len(), 0);
}
