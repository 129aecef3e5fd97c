//! Bench scenario 8: Global Accelerator mappings at the guidance's size, two regions of 61,440
//! entries each (two /22 subnets × 30 ports), gzipped as its script writes them. Load time and
//! lookup time in this process (the Director's own code), and the Director's idle RSS with the
//! mappings against the same run without them.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use agones_openmatch_director::doubles::certs::TempDir;
use agones_openmatch_director::mapping;

use crate::bench::Bench;
use crate::world::{World, WorldConfig, EXIT_BOUND};

/// Entries per region: two /22 subnets (2 × 1024 addresses) × 30 ports (7000–7029).
const ENTRIES: usize = 2 * 1024 * 30;
const REGIONS: [&str; 2] = ["us-east-1", "us-east-2"];
/// How long the idle Director runs before its RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

/// Medians (and ranges) of the runs.
pub struct MappingFigures {
    load_ms: Vec<f64>,
    lookup_ns: Vec<f64>,
    rss_without_kib: Vec<f64>,
    rss_with_kib: Vec<f64>,
    gzipped_kib: f64,
}

/// The `i`-th address of the two /22 subnets 10.1.0.0/22 and 10.2.0.0/22.
fn address(i: usize) -> Ipv4Addr {
    let subnet = if i < 1024 { 1 } else { 2 };
    let host = (i % 1024) as u32;
    Ipv4Addr::from((10 << 24) | (subnet << 16) | host)
}

/// Writes `mapping<i>.gz` and `accelerator<i>` for both regions, the guidance's way.
fn write_guidance_files(dir: &Path) -> f64 {
    let mut gzipped = 0;
    for (index, _) in REGIONS.iter().enumerate() {
        let entries: Vec<String> = (0..ENTRIES)
            .map(|e| {
                let (host, port) = (e / 30, 7000 + e % 30);
                let accelerator_port = 1 + (e + index * 7) % 65_000;
                format!("  \"{}:{port}\": {accelerator_port}", address(host))
            })
            .collect();
        let json = format!("{{\n{}\n}}\n", entries.join(",\n"));
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(json.as_bytes()).expect("gzip");
        let bytes = encoder.finish().expect("gzip");
        gzipped += bytes.len();
        std::fs::write(dir.join(format!("mapping{}.gz", index + 1)), bytes).expect("write");
        std::fs::write(
            dir.join(format!("accelerator{}", index + 1)),
            format!("a{}.awsglobalaccelerator.com\n", index + 1),
        )
        .expect("write");
    }
    gzipped as f64 / 1024.0 / REGIONS.len() as f64
}

/// The idle Director's RSS (KiB) after [`SETTLE`], with the mappings in `dir` or without.
fn idle_rss(bench: &Bench, mapping_dir: Option<&Path>) -> f64 {
    let config = WorldConfig {
        regions: REGIONS.map(String::from).to_vec(),
        mapping_dir: mapping_dir.map(Path::to_path_buf),
        ..bench.world()
    };
    let mut world = World::start(config);
    let mut director = world.start_director("warn");
    let log = director.log_lines();
    let drain = std::thread::spawn(move || log.for_each(drop));
    std::thread::sleep(SETTLE);
    let rss = director.rss_kib() as f64;
    director.terminate();
    director.wait_exit(EXIT_BOUND);
    let _ = drain.join();
    rss
}

pub fn run(bench: &Bench) -> MappingFigures {
    let runs = bench.runs;
    let dir = TempDir::new("bench-mapping");
    let gzipped_kib = write_guidance_files(dir.path());
    let regions: Vec<String> = REGIONS.map(String::from).to_vec();
    let mut figures = MappingFigures {
        load_ms: Vec::new(),
        lookup_ns: Vec::new(),
        rss_without_kib: Vec::new(),
        rss_with_kib: Vec::new(),
        gzipped_kib,
    };
    for run in 0..runs {
        let started = Instant::now();
        let mappings = mapping::load(dir.path(), &regions).expect("valid mappings");
        figures.load_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let lookups = 1_000_000;
        let started = Instant::now();
        let mut found = 0;
        for i in 0..lookups {
            let e = (i * 7919) % ENTRIES;
            let region = &mappings.regions[REGIONS[i % 2]];
            found += usize::from(
                region
                    .lookup(address(e / 30), (7000 + e % 30) as u16)
                    .is_some(),
            );
        }
        figures
            .lookup_ns
            .push(started.elapsed().as_secs_f64() * 1e9 / lookups as f64);
        assert_eq!(found, lookups, "every key is in the mapping");
        figures.rss_without_kib.push(idle_rss(bench, None));
        figures.rss_with_kib.push(idle_rss(bench, Some(dir.path())));
        eprintln!("sim: mapping run {}/{runs} done", run + 1);
    }
    figures
}

fn median(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

impl MappingFigures {
    fn rss_increase_mib(&self) -> Vec<f64> {
        self.rss_with_kib
            .iter()
            .zip(&self.rss_without_kib)
            .map(|(with, without)| (with - without) / 1024.0)
            .collect()
    }

    /// The scenario's Markdown table.
    pub fn markdown(&self) -> String {
        let cell = |values: &[f64], decimals: usize| {
            let (median, min, max) = median(values);
            format!("{median:.decimals$} ({min:.decimals$}–{max:.decimals$})")
        };
        let rss_without: Vec<f64> = self.rss_without_kib.iter().map(|k| k / 1024.0).collect();
        format!(
            "\n| scenario | setup | load ms (target ≤ 150) | lookup ns (target ≤ 1000) | idle RSS MiB without | RSS increase MiB (target ≤ 4) |\n|---|---|---|---|---|---|\n| 8 mapping | 2 regions × {ENTRIES} entries, {:.0} KiB gzipped each | {} | {} | {} | {} |\n",
            self.gzipped_kib,
            cell(&self.load_ms, 1),
            cell(&self.lookup_ns, 0),
            cell(&rss_without, 1),
            cell(&self.rss_increase_mib(), 2),
        )
    }

    /// The figures as JSON (medians).
    pub fn json(&self) -> String {
        format!(
            "{{\"scenario\": \"8 mapping\", \"entries_per_region\": {ENTRIES}, \"load_ms\": {:.2}, \"lookup_ns\": {:.1}, \"rss_increase_mib\": {:.2}}}",
            median(&self.load_ms).0,
            median(&self.lookup_ns).0,
            median(&self.rss_increase_mib()).0
        )
    }
}
