//! A drop-in for the guidance's director: the binary started exactly as the original's manifest
//! starts it (settings as Go flags, a bare `-multicluster`, its overlapping RANGES), in a working
//! directory laid out like its image's `/app`: `agones-tls/`, `openmatch-tls/` and
//! `global-accelerator-mapping/` (a ConfigMap behind a `..data` symlink).

use crate::common::{original_args, DirectorEnv, OriginalApp, World, WAIT};

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
    let started = director.wait_for_log("Started with the original director's flags", WAIT);
    assert_eq!(started.len(), 1, "{:#?}", director.log());
    for file in [
        "Agones client certificate agones-tls/tls.crt, key agones-tls/tls.key, CA agones-tls/ca.crt",
        "Open Match mTLS from openmatch-tls/{tls.crt,tls.key,ca.crt}",
        "Global Accelerator mapping from global-accelerator-mapping/",
    ] {
        assert!(started[0].contains(file), "{file:?} in {}", started[0]);
    }
    let overlap = director.wait_for_log("RANGES (-ranges): bands 50-74 and 74-99 overlap", WAIT);
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
