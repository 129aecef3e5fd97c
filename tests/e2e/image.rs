//! The container image, end to end: `make image-test` runs these (they need Docker and the image
//! named by DIRECTOR_IMAGE, so `cargo test` alone skips them).

use std::process::Command;
use std::time::Duration;

use crate::common::{
    final_accounting, original_args, wait_until, Director, OriginalApp, World, MOUNTED, WAIT,
};

fn image() -> String {
    std::env::var("DIRECTOR_IMAGE")
        .expect("DIRECTOR_IMAGE names the image to test (make image-test)")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("run command");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
#[ignore = "needs Docker and DIRECTOR_IMAGE; run by make image-test"]
fn image_assigns_matches_and_drains_on_sigterm() {
    let world = World::new();
    let east1 = world.players("us-east-1", 4);
    let east2 = world.players("us-east-2", 4);
    let mut director = world.env.start_image(&image());
    wait_until(WAIT, "all tickets assigned", || {
        world.all_assigned(&east1) && world.all_assigned(&east2)
    });
    for request in &world.allocator.state().requests {
        assert_eq!(request.get_namespace(), "game-servers");
    }
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let accounting = final_accounting(&director);
    assert_eq!((accounting.received, accounting.assigned), (2, 2));
}

#[test]
#[ignore = "needs Docker and DIRECTOR_IMAGE; run by make image-test"]
fn image_is_one_layer_holding_only_the_static_binary() {
    let image = image();
    let layers = run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &image,
        ],
    );
    assert_eq!(layers.trim(), "1");
    let config = run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Entrypoint}} {{.Config.WorkingDir}}",
            &image,
        ],
    );
    assert_eq!(config.trim(), "65532:65532 [\"/app/director\"] /app");

    let dir = agones_openmatch_director::doubles::certs::TempDir::new("image");
    let archive = dir.path().join("image.tar");
    run(
        "docker",
        &["save", "--output", archive.to_str().unwrap(), &image],
    );
    let manifest = run("tar", &["-xOf", archive.to_str().unwrap(), "manifest.json"]);
    let layer = manifest
        .split("\"Layers\":[\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("manifest.json names the layer");
    let listing = run(
        "sh",
        &[
            "-c",
            &format!("tar -xOf '{}' '{layer}' | tar -tvf -", archive.display()),
        ],
    );
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    assert_eq!(files.len(), 1, "the layer holds one file: {listing}");
    assert!(files[0].ends_with(" app/director"), "{listing}");
    let size = run(
        "docker",
        &["image", "inspect", "--format", "{{.Size}}", &image],
    );
    eprintln!(
        "image {image}: 1 layer, {:.1} MiB",
        size.trim().parse::<f64>().unwrap() / (1024.0 * 1024.0)
    );
}

/// The image started the way the original's manifest starts it: `command: ["/app/director",
/// flags…]` (an entrypoint override), with its three directories mounted under /app.
#[test]
#[ignore = "needs Docker and DIRECTOR_IMAGE; run by make image-test"]
fn image_runs_the_original_manifest_way() {
    let original = OriginalApp::new();
    let name = format!("director-test-original-{}", std::process::id());
    let mut command = Command::new("docker");
    command.args(["run", "--rm", "--name", &name, "--network", "host"]);
    command.args(["--read-only", "--cap-drop", "ALL"]);
    for dir in MOUNTED {
        let host = original.app.join(dir);
        command.args(["-v", &format!("{}:/app/{dir}:ro", host.display())]);
    }
    command.args(["-e", "METRICS_ADDR=127.0.0.1:0"]);
    command.args(["--entrypoint", "/app/director", &image()]);
    command.args(original_args(&original.world));
    let director =
        original.assigns_through_the_accelerators(|| Director::in_container(command, name));
    assert_eq!(
        director
            .lines_with("Started with the original director's flags")
            .len(),
        1
    );
}
