//! Global Accelerator custom routing, end to end: players get `<accelerator of their region>:<mapped
//! port>` for the game server's InternalIP and port, through mappings in the guidance's ConfigMap
//! layout (behind a `..data` symlink) or in the per-region layout; misses, reloads, a corrupt
//! update, GAMESERVER_ADDRESS, and bad mapping files.

use std::path::Path;

use crate::common::{
    connection, expected, final_accounting, get, guidance_configmap, gzip, mapping_json,
    operations_address, publish, sample, sample_if_any, server_number, stop, wait_until, World,
    WAIT,
};
use agones_openmatch_director::doubles::certs::SecretVolume;
use agones_openmatch_director::doubles::openmatch::TicketStatus;

#[test]
fn players_get_their_regions_accelerator_and_mapping_changes_apply_while_corrupt_ones_do_not() {
    let mut world = World::new();
    let dir = world.env.dir.path().join("global-accelerator-mapping");
    std::fs::create_dir(&dir).unwrap();
    let mut volume = SecretVolume {
        dir: &dir,
        version: 0,
    };
    publish(&mut volume, &guidance_configmap(40_000, &[3]));
    world.env.set("GA_MAPPING_DIR", dir.display().to_string());
    let east1 = world.players("us-east-1", 12);
    let east2 = world.players("us-east-2", 8);
    let director = world.env.start();
    let address = operations_address(&director);
    wait_until(WAIT, "every ticket assigned", || {
        world.all_assigned(&east1) && world.all_assigned(&east2)
    });
    for (region, tickets) in [(1, &east1), (2, &east2)] {
        for ticket in tickets {
            assert_eq!(
                connection(&world, ticket),
                expected(&world, ticket, region, 40_000)
            );
        }
    }
    // Game server 3 (the third allocation, in whichever region) is missing from the mappings:
    // its match was released and counted, and its players were matched again.
    let (_, metrics) = get(address, "/metrics");
    let misses: f64 = ["us-east-1", "us-east-2"]
        .iter()
        .filter_map(|region| {
            let series =
                format!("director_connection_translation_misses_total{{region=\"{region}\"}}");
            sample_if_any(&metrics, &series)
        })
        .sum();
    assert_eq!(misses, 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "director_mapping_entries{region=\"us-east-1\"}"),
        59.0
    );
    director.wait_for_log("10.0.0.1:7003 (not in the region's mapping)", WAIT);
    assert!(director
        .lines_with("ERROR")
        .iter()
        .any(|l| l.contains("Game server gs-us-east-") && l.contains("-3 allocated for match")));

    // A new mapping: the next assignments use it.
    publish(&mut volume, &guidance_configmap(50_000, &[]));
    director.wait_for_log("Reloaded the Global Accelerator mappings", WAIT);
    let later = world.players("us-east-2", 4);
    wait_until(WAIT, "assigned with the new mapping", || {
        world.all_assigned(&later)
    });
    for ticket in &later {
        assert_eq!(
            connection(&world, ticket),
            expected(&world, ticket, 2, 50_000)
        );
    }

    // A corrupt update (truncated gzip) is refused; the mapping in use stays.
    let mut corrupt = guidance_configmap(60_000, &[]);
    let cut = corrupt[0].1.len() / 2;
    corrupt[0].1.truncate(cut);
    publish(&mut volume, &corrupt);
    wait_until(WAIT, "the corrupt mapping refused", || {
        let (_, metrics) = get(address, "/metrics");
        sample(&metrics, "director_mapping_reload_errors_total") == 1.0
    });
    let last = world.players("us-east-1", 4);
    wait_until(WAIT, "assigned with the kept mapping", || {
        world.all_assigned(&last)
    });
    for ticket in &last {
        assert_eq!(
            connection(&world, ticket),
            expected(&world, ticket, 1, 50_000)
        );
    }
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.orphaned_game_servers, 1);
    assert_eq!(accounting.released, 1);
    let om = world.om.state();
    let handed_out: Vec<&str> = om
        .tickets
        .iter()
        .filter_map(|t| match &t.status {
            TicketStatus::Assigned { connection, .. } => Some(connection.as_str()),
            _ => None,
        })
        .collect();
    assert!(handed_out
        .iter()
        .all(|c| c.starts_with('a') && !c.ends_with(":0")));
}

/// The guidance's files are matched to regions by position in REGIONS, at start and at every
/// reload, whatever the alphabetical order of the regions.
#[test]
fn a_reload_keeps_each_region_on_its_own_mapping_when_regions_are_not_alphabetical() {
    let mut world = World::new();
    world.env.set("REGIONS", "us-east-2,us-east-1");
    let dir = world.env.dir.path().join("global-accelerator-mapping");
    std::fs::create_dir(&dir).unwrap();
    let mut volume = SecretVolume {
        dir: &dir,
        version: 0,
    };
    publish(&mut volume, &guidance_configmap(40_000, &[]));
    world.env.set("GA_MAPPING_DIR", dir.display().to_string());
    let director = world.env.start();
    // REGIONS position 1 is us-east-2: mapping1.gz and accelerator1 are its files.
    let before = world.players("us-east-2", 4);
    wait_until(WAIT, "assigned", || world.all_assigned(&before));
    for ticket in &before {
        assert_eq!(
            connection(&world, ticket),
            expected(&world, ticket, 1, 40_000)
        );
    }
    publish(&mut volume, &guidance_configmap(50_000, &[]));
    director.wait_for_log("Reloaded the Global Accelerator mappings", WAIT);
    let east2 = world.players("us-east-2", 4);
    let east1 = world.players("us-east-1", 4);
    wait_until(WAIT, "assigned after the reload", || {
        world.all_assigned(&east2) && world.all_assigned(&east1)
    });
    for (position, tickets) in [(1, &east2), (2, &east1)] {
        for ticket in tickets {
            assert_eq!(
                connection(&world, ticket),
                expected(&world, ticket, position, 50_000),
                "REGIONS position {position}"
            );
        }
    }
    let accounting = final_accounting(&stop(director));
    assert_eq!(accounting.released, 0);
}

#[test]
fn three_regions_in_the_per_region_layout() {
    let mut world = World::new();
    let regions = ["eu-west-1", "us-east-1", "ap-south-1"];
    let dir = world.env.dir.path().join("mappings");
    std::fs::create_dir(&dir).unwrap();
    for (i, region) in regions.iter().enumerate() {
        let base = 40_000 + 1000 * (i as u16 + 1);
        let json = mapping_json(60, base, &[]);
        let (name, bytes) = if i == 0 {
            (format!("mapping-{region}.json"), json.into_bytes())
        } else {
            (format!("mapping-{region}.gz"), gzip(&json))
        };
        std::fs::write(dir.join(name), bytes).unwrap();
        std::fs::write(
            dir.join(format!("accelerator-{region}")),
            format!("a{}.awsglobalaccelerator.com", i + 1),
        )
        .unwrap();
    }
    world.env.set("REGIONS", regions.join(","));
    world.env.set("GA_MAPPING_DIR", dir.display().to_string());
    let tickets: Vec<(u16, Vec<String>)> = regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            (
                i as u16 + 1,
                world.om.add_players(&regions, region, 10.0, 8),
            )
        })
        .collect();
    let director = world.env.start();
    wait_until(WAIT, "every ticket assigned", || {
        tickets.iter().all(|(_, t)| world.all_assigned(t))
    });
    for (region, tickets) in &tickets {
        for ticket in tickets {
            assert_eq!(
                connection(&world, ticket),
                expected(&world, ticket, *region, 40_000)
            );
        }
    }
    stop(director);
}

#[test]
fn gameserver_address_picks_the_address_type() {
    let mut world = World::new();
    world.env.set("GAMESERVER_ADDRESS", "ExternalDNS");
    let tickets = world.players("us-east-1", 8);
    let director = world.env.start();
    wait_until(WAIT, "every ticket assigned", || {
        world.all_assigned(&tickets)
    });
    stop(director);
    for ticket in &tickets {
        let n = server_number(&world, ticket);
        assert_eq!(
            connection(&world, ticket),
            format!("gs-us-east-1-{n}.example.com:{}", 7000 + n)
        );
    }
}

/// Starts the Director with the guidance's files in `dir` as given, expects exit code 2 before
/// any call, and returns its log.
fn refused(world: &mut World, dir: &Path) -> String {
    world.env.set("GA_MAPPING_DIR", dir.display().to_string());
    let mut director = world.env.start();
    assert_eq!(director.wait_exit(WAIT).code(), Some(2));
    assert_eq!(world.om.state().fetches.len(), 0);
    director.log().join("\n")
}

#[test]
fn bad_mapping_files_are_refused_at_start_naming_the_file() {
    let mut world = World::new();
    let good = gzip(&mapping_json(5, 40_000, &[]));
    let truncated = good[..good.len() / 2].to_vec();
    for (bytes, why) in [
        (truncated, "not a valid gzip file"),
        (gzip("[1, 2, 3]"), "not a JSON object"),
        (gzip("{}"), "holds no valid entry"),
        (gzip(r#"{"10.0.0.1": 41001}"#), "holds no valid entry"),
        (gzip(r#"{"10.0.0.1:7001": 70000}"#), "holds no valid entry"),
    ] {
        let dir = world.env.dir.path().join(format!("bad-{}", why.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mapping1.gz"), &bytes).unwrap();
        std::fs::write(dir.join("accelerator1"), "a1.example.com").unwrap();
        std::fs::write(dir.join("mapping2.gz"), &good).unwrap();
        std::fs::write(dir.join("accelerator2"), "a2.example.com").unwrap();
        let log = refused(&mut world, &dir);
        let expected = format!(
            "GA_MAPPING_DIR: {}: {why}",
            dir.join("mapping1.gz").display()
        );
        assert!(log.contains(&expected), "{expected:?} not in\n{log}");
    }
    let dir = world.env.dir.path().join("only-one-region");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mapping1.gz"), &good).unwrap();
    std::fs::write(dir.join("accelerator1"), "a1.example.com").unwrap();
    let log = refused(&mut world, &dir);
    assert!(
        log.contains("GA_MAPPING_DIR: no mapping for region us-east-2 in"),
        "{log}"
    );
}

#[test]
fn skipped_entries_are_warned_once_per_load_with_the_first_keys() {
    let mut world = World::new();
    let dir = world.env.dir.path().join("mapping");
    std::fs::create_dir(&dir).unwrap();
    let mixed = r#"{"10.0.0.1:7001": 41001, "10.0.0.1:7002": 41002, "10.0.0.1": 41003, "10.0.0.1:7004": 70000}"#;
    std::fs::write(dir.join("mapping1.gz"), gzip(mixed)).unwrap();
    std::fs::write(dir.join("accelerator1"), "a1.example.com").unwrap();
    std::fs::write(dir.join("mapping2.gz"), gzip(&mapping_json(5, 42_000, &[]))).unwrap();
    std::fs::write(dir.join("accelerator2"), "a2.example.com").unwrap();
    world.env.set("GA_MAPPING_DIR", dir.display().to_string());
    let director = world.env.start();
    director.wait_for_log("Global Accelerator mapping of region us-east-2", WAIT);
    let warnings = director.lines_with("skipped 2 entries");
    assert_eq!(warnings.len(), 1, "{:#?}", director.log());
    assert!(warnings[0].contains(r#"["10.0.0.1", "10.0.0.1:7004"]"#));
    stop(director);
    let (code, report) = world.env.check();
    assert_eq!(code, Some(0), "{report}");
    let mapping1 = dir.join("mapping1.gz").display().to_string();
    let mapping2 = dir.join("mapping2.gz").display().to_string();
    for line in [
        format!("WARN  region us-east-1: {mapping1} with 2 entries (2 skipped); accelerator a1.example.com from "),
        format!("ok    region us-east-2: {mapping2} with 5 entries (0 skipped); accelerator a2.example.com from "),
    ] {
        assert!(report.contains(&line), "{line:?} not in\n{report}");
    }
}
