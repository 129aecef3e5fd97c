//! `sim bench`: measured scenarios against the simulated world. Figures, not pass/fail: a
//! Markdown table on standard output and `target/bench/results.json`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::world::{quantile, DirectorProcess, World, WorldConfig};

/// Bench settings.
pub struct Options {
    /// Tiny sizes and one scenario: a smoke run that the benchmark still works.
    quick: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        match args {
            [] => Ok(Options { quick: false }),
            [flag] if flag == "--quick" => Ok(Options { quick: true }),
            _ => Err("bench takes only --quick".to_string()),
        }
    }
}

/// One row of the results.
#[derive(Default)]
struct Row {
    scenario: &'static str,
    setup: String,
    matches: usize,
    matches_per_second: Option<f64>,
    ideal_ratio: Option<f64>,
    cpu_us_per_match: Option<f64>,
    idle_cpu_percent: Option<f64>,
    peak_rss_mib: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// What one run of the Director measured.
struct Measured {
    matches: usize,
    /// From the first assignment to the last.
    seconds: f64,
    cpu: Duration,
    peak_rss_kib: u64,
    p50: Duration,
    p99: Duration,
}

impl Measured {
    /// Assignments per second between the first and the last.
    fn rate(&self) -> f64 {
        self.matches.saturating_sub(1) as f64 / self.seconds
    }
}

pub fn run(options: Options) -> ExitCode {
    let scale = if options.quick { 0.05 } else { 1.0 };
    let sized = |n: f64| ((n * scale).ceil() as usize).max(4);
    let mut rows = vec![saturation(sized(2000.0))];
    if !options.quick {
        for threads in [1, 8, 32] {
            rows.push(latency_bound(threads));
        }
        rows.push(time_to_assignment());
        rows.push(profiles_scale("2 regions × 5 bands", 2, 5));
        rows.push(profiles_scale("20 regions × 10 bands", 20, 10));
    }
    let table = markdown(&rows);
    print!("{table}");
    if let Err(error) = write_json(&rows) {
        eprintln!("sim: cannot write target/bench/results.json: {error}");
        return ExitCode::FAILURE;
    }
    eprintln!("sim: wrote target/bench/results.json");
    ExitCode::SUCCESS
}

/// Scenario 1: no allocator latency, a large backlog; how fast and how cheaply the Director works.
fn saturation(matches: usize) -> Row {
    let config = WorldConfig {
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        ..WorldConfig::default()
    };
    let measured = backlog(config, matches);
    Row {
        scenario: "1 saturation",
        setup: format!("latency 0, backlog {matches} matches, 8 threads"),
        matches: measured.matches,
        matches_per_second: Some(measured.rate()),
        cpu_us_per_match: Some(measured.cpu.as_secs_f64() * 1e6 / measured.matches as f64),
        peak_rss_mib: measured.peak_rss_kib as f64 / 1024.0,
        ..Row::default()
    }
}

/// Scenario 2: 20 ms allocator latency; throughput against the ideal threads / latency.
fn latency_bound(threads: usize) -> Row {
    let latency = Duration::from_millis(20);
    let ideal = threads as f64 / latency.as_secs_f64();
    let matches = (ideal * 2.0) as usize;
    let config = WorldConfig {
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        allocator_latency: latency,
        allocator_threads: threads,
        ..WorldConfig::default()
    };
    let measured = backlog(config, matches);
    let rate = measured.rate();
    Row {
        scenario: "2 latency-bound",
        setup: format!("latency 20 ms, {threads} threads, backlog {matches} matches"),
        matches: measured.matches,
        matches_per_second: Some(rate),
        ideal_ratio: Some(rate / ideal),
        cpu_us_per_match: Some(measured.cpu.as_secs_f64() * 1e6 / measured.matches as f64),
        peak_rss_mib: measured.peak_rss_kib as f64 / 1024.0,
        ..Row::default()
    }
}

/// Scenario 3: moderate load; time from a match on the stream to its AssignTickets.
fn time_to_assignment() -> Row {
    let config = WorldConfig {
        fleet_per_region: 2000,
        session: Duration::from_secs(3600),
        interval: Duration::from_millis(100),
        ..WorldConfig::default()
    };
    let mut world = World::start(config);
    let (director, drain) = start_quietly(&world);
    let players = 2000;
    let regions = world.config.regions.len() as u64;
    let started = Instant::now();
    for player in 0..players {
        world.add_player_near((player / 4 % regions) as usize, 10.0);
        let due = started + Duration::from_micros(player * 5_000);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let measured = finish(&world, director, drain, players as usize / 4);
    Row {
        scenario: "3 time-to-assignment",
        setup: "200 players/s for 10 s, latency 0, 8 threads".to_string(),
        matches: measured.matches,
        p50_ms: Some(measured.p50.as_secs_f64() * 1e3),
        p99_ms: Some(measured.p99.as_secs_f64() * 1e3),
        peak_rss_mib: measured.peak_rss_kib as f64 / 1024.0,
        ..Row::default()
    }
}

/// Scenario 4: many profiles; Director CPU and memory idle and under a backlog.
fn profiles_scale(label: &str, regions: usize, bands: usize) -> Row {
    let config = WorldConfig {
        regions: (0..regions).map(|r| format!("region-{r:02}")).collect(),
        ranges: (0..bands)
            .map(|b| {
                let top = if b + 1 == bands { 9999 } else { b * 10 + 9 };
                format!("{}-{top}", b * 10)
            })
            .collect::<Vec<_>>()
            .join(","),
        fleet_per_region: 400,
        session: Duration::from_secs(3600),
        ..WorldConfig::default()
    };
    let mut world = World::start(config);
    let (director, drain) = start_quietly(&world);
    let idle_window = Duration::from_secs(3);
    std::thread::sleep(Duration::from_secs(1));
    let before = director.cpu_time();
    std::thread::sleep(idle_window);
    let idle = director.cpu_time().saturating_sub(before);
    let matches = 400;
    for player in 0..matches * 4 {
        // Four consecutive players share a region and a band, so every player ends up in a match.
        let group = player / 4;
        let band = group / regions % bands;
        world.add_player_near(group % regions, (band * 10 + 5) as f64);
    }
    let measured = finish(&world, director, drain, matches);
    Row {
        scenario: "4 profiles",
        setup: format!(
            "{label} = {} profiles, backlog {matches} matches",
            regions * bands
        ),
        matches: measured.matches,
        matches_per_second: Some(measured.rate()),
        cpu_us_per_match: Some(
            measured.cpu.saturating_sub(idle).as_secs_f64() * 1e6 / measured.matches as f64,
        ),
        idle_cpu_percent: Some(idle.as_secs_f64() / idle_window.as_secs_f64() * 100.0),
        peak_rss_mib: measured.peak_rss_kib as f64 / 1024.0,
        ..Row::default()
    }
}

/// Puts `matches` matches' worth of players in the pool, then runs the Director until all are
/// assigned.
fn backlog(config: WorldConfig, matches: usize) -> Measured {
    let mut world = World::start(config);
    let regions = world.config.regions.len();
    for player in 0..matches * 4 {
        world.add_player_near(player / 4 % regions, 10.0);
    }
    let (director, drain) = start_quietly(&world);
    finish(&world, director, drain, matches)
}

/// Starts the Director with warnings only, draining its log so that it never blocks on the pipe.
fn start_quietly(world: &World) -> (DirectorProcess, std::thread::JoinHandle<()>) {
    let mut director = world.start_director("warn");
    let log = director.log_lines();
    let drain = std::thread::spawn(move || log.for_each(drop));
    (director, drain)
}

/// Waits until `matches` matches are assigned (at most two minutes), then measures and stops.
fn finish(
    world: &World,
    mut director: DirectorProcess,
    drain: std::thread::JoinHandle<()>,
    matches: usize,
) -> Measured {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up && assigned_matches(world) < matches {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = director.cpu_time();
    let peak_rss_kib = director.peak_rss_kib();
    director.terminate();
    director.wait();
    let _ = drain.join();
    let om = world.om.state();
    let done: Vec<_> = om
        .matches
        .values()
        .filter_map(|m| Some((m.streamed_at, m.assigned_at?)))
        .collect();
    // Steady-state rate: from the first assignment to the last one, so that start-up (the first
    // connections and handshakes) does not count against it.
    let first = done.iter().map(|(_, a)| *a).min();
    let last = done.iter().map(|(_, a)| *a).max();
    let seconds = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64().max(1e-3),
        _ => f64::NAN,
    };
    let mut waits: Vec<Duration> = done.iter().map(|(s, a)| *a - *s).collect();
    Measured {
        matches: done.len(),
        seconds,
        cpu,
        peak_rss_kib,
        p50: quantile(&mut waits, 0.5),
        p99: quantile(&mut waits, 0.99),
    }
}

fn assigned_matches(world: &World) -> usize {
    world
        .om
        .state()
        .matches
        .values()
        .filter(|m| m.assigned_at.is_some())
        .count()
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.decimals$}"))
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | setup | matches | matches/s | vs ideal | CPU µs/match | idle CPU % | peak RSS MiB | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            row.scenario,
            row.setup,
            row.matches,
            cell(row.matches_per_second, 0),
            cell(row.ideal_ratio, 2),
            cell(row.cpu_us_per_match, 0),
            cell(row.idle_cpu_percent, 2),
            row.peak_rss_mib,
            cell(row.p50_ms, 1),
            cell(row.p99_ms, 1),
        );
    }
    out
}

fn json_number(value: Option<f64>) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or_else(|| "null".to_string(), |v| format!("{v:.3}"))
}

fn write_json(rows: &[Row]) -> std::io::Result<()> {
    let entries: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"scenario\": \"{}\", \"setup\": \"{}\", \"matches\": {}, \"matches_per_second\": {}, \"ideal_ratio\": {}, \"cpu_us_per_match\": {}, \"idle_cpu_percent\": {}, \"peak_rss_mib\": {}, \"p50_ms\": {}, \"p99_ms\": {}}}",
                r.scenario,
                r.setup,
                r.matches,
                json_number(r.matches_per_second),
                json_number(r.ideal_ratio),
                json_number(r.cpu_us_per_match),
                json_number(r.idle_cpu_percent),
                json_number(Some(r.peak_rss_mib)),
                json_number(r.p50_ms),
                json_number(r.p99_ms),
            )
        })
        .collect();
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/results.json",
        format!("[\n{}\n]\n", entries.join(",\n")),
    )
}
