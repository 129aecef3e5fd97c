//! `sim bench`: measured scenarios against the simulated world. Figures, not pass/fail: a
//! Markdown table on standard output and `target/bench/results.json`.
//!
//! Every row is run `RUNS` times and shows the median with the range (min–max) beside it; each
//! run has at least `STEADY` of steady state (from the first assignment to the last). The
//! simulator shares the machine with the Director, so each row also shows the simulator's own CPU
//! use: when it nears the machine's cores, the simulator, not the Director, is the limit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::bench_report::{markdown, write_json, Measured, Row};
use crate::flag_value;
use crate::world::{quantile, World, WorldConfig, EXIT_BOUND};
use agones_openmatch_director::doubles::director::{cpu_time_of, Director};

/// Runs of every row.
const RUNS: usize = 3;
/// Least steady state a throughput run aims for.
const STEADY: Duration = Duration::from_secs(6);
/// The Director's defaults, for the arithmetic of the ideal rate.
const DEFAULT_THREADS_PER_REGION: usize = 32;

/// Bench settings.
pub struct Options {
    /// Tiny sizes, one run, two scenarios: a smoke run that the benchmark still works.
    quick: bool,
    /// Only the scenarios whose name starts with this (e.g. `2` for the latency sweep).
    only: Option<String>,
    /// The `director` binary to measure (for example the shipped static one); `None`: the one
    /// next to this simulator.
    director: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            quick: false,
            only: None,
            director: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--quick" => options.quick = true,
                "--only" => options.only = Some(flag_value(flag, args.next())?),
                "--director" => options.director = Some(flag_value(flag, args.next())?),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(options)
    }

    /// Whether to run `scenario`.
    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| scenario.starts_with(only.as_str()))
    }
}

/// What every scenario shares: how many times each row runs, and the Director it runs.
pub struct Bench {
    pub runs: usize,
    director: Option<PathBuf>,
}

impl Bench {
    /// The default world, running the Director under measurement.
    pub fn world(&self) -> WorldConfig {
        WorldConfig {
            director: self.director.clone(),
            ..WorldConfig::default()
        }
    }

    /// Runs `scenario` [`Bench::runs`] times.
    fn repeat(&self, scenario: impl Fn() -> Measured) -> Vec<Measured> {
        let runs = self.runs;
        (0..runs)
            .map(|run| {
                let measured = scenario();
                eprintln!(
                    "sim: run {}/{runs}: {} matches, {:.0}/s, sim {:.2} cores",
                    run + 1,
                    measured.matches,
                    measured.rate(),
                    measured.sim_cores
                );
                measured
            })
            .collect()
    }
}

pub fn run(options: Options) -> ExitCode {
    let bench = Bench {
        runs: if options.quick { 1 } else { RUNS },
        director: options.director.clone(),
    };
    let bench = &bench;
    let mut rows = Vec::new();
    if options.quick {
        rows.push(saturation(bench, 100));
        rows.push(latency_sweep(bench, Duration::from_millis(20), 100));
    } else {
        if options.wants("1") {
            rows.push(saturation(bench, 25_000));
        }
        if options.wants("2") {
            for latency_ms in [20, 50, 100, 250] {
                let latency = Duration::from_millis(latency_ms);
                rows.push(latency_sweep(bench, latency, sweep_backlog(latency)));
            }
        }
        if options.wants("3") {
            let twenty = Duration::from_millis(20);
            for threads in [1, 8, 32] {
                rows.push(latency_bound(bench, 1, threads, twenty));
            }
            // The simulator itself serves 400+/s at 250 ms: it is not what limits the sweep.
            rows.push(latency_bound(bench, 2, 64, Duration::from_millis(250)));
        }
        if options.wants("4") {
            rows.push(time_to_assignment(bench));
        }
        if options.wants("5") {
            rows.push(profiles_scale(bench, "2 regions × 5 bands", 2, 5));
            rows.push(profiles_scale(bench, "20 regions × 10 bands", 20, 10));
        }
        if options.wants("6") {
            rows.push(rate_limited(bench, 150.0));
        }
        if options.wants("7") {
            rows.push(regions_alone(bench, None));
            rows.push(regions_alone(bench, Some("us-east-1")));
        }
    }
    let mapping = (!options.quick && options.wants("8")).then(|| crate::mapping_bench::run(bench));
    let failover =
        (!options.quick && options.wants("9")).then(|| crate::failover_bench::run(bench));
    if !rows.is_empty() {
        print!("{}", markdown(&rows, bench.runs));
    }
    let mut scenarios = Vec::new();
    if let Some(mapping) = &mapping {
        print!("{}", mapping.markdown());
        scenarios.push(mapping.json());
    }
    if let Some(failover) = &failover {
        print!("{}", failover.markdown());
        scenarios.push(failover.json());
    }
    if let Err(error) = write_json(&rows, &scenarios) {
        eprintln!("sim: cannot write target/bench/results.json: {error}");
        return ExitCode::FAILURE;
    }
    eprintln!("sim: wrote target/bench/results.json");
    ExitCode::SUCCESS
}

/// Scenario 1: no allocator latency, a large backlog; how fast and how cheaply the Director works.
fn saturation(bench: &Bench, matches: usize) -> Row {
    let config = WorldConfig {
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        ..bench.world()
    };
    Row {
        scenario: "1 saturation",
        setup: format!("latency 0, backlog {matches} matches, defaults"),
        runs: bench.repeat(|| backlog(config.clone(), matches, &[10.0])),
        ideal: None,
        throughput: true,
        waits: false,
    }
}

/// Matches for at least [`STEADY`] at the rate the defaults allow at `latency` (at most 3000/s,
/// about what two cores shared with the simulator reach).
fn sweep_backlog(latency: Duration) -> usize {
    let ideal = 2.0 * DEFAULT_THREADS_PER_REGION as f64 / latency.as_secs_f64();
    (ideal.min(3000.0) * STEADY.as_secs_f64()) as usize
}

/// Scenario 2: the default configuration (10 profiles, 2 regions) against an allocator that
/// answers after `latency`, with a backlog in every profile.
fn latency_sweep(bench: &Bench, latency: Duration, matches: usize) -> Row {
    let config = WorldConfig {
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        allocator_latency: latency,
        ..bench.world()
    };
    // One player latency per band of the default RANGES, so that all ten profiles have matches.
    let bands = [10.0, 30.0, 60.0, 80.0, 150.0];
    Row {
        scenario: "2 latency sweep",
        setup: format!(
            "latency {} ms, defaults (2 regions × {DEFAULT_THREADS_PER_REGION} threads), backlog {matches} matches in 10 profiles",
            latency.as_millis()
        ),
        runs: bench.repeat(|| backlog(config.clone(), matches, &bands)),
        ideal: Some(2.0 * DEFAULT_THREADS_PER_REGION as f64 / latency.as_secs_f64()),
        throughput: true,
        waits: false,
    }
}

/// Scenario 3: `threads` per region for `regions` regions at `latency`; throughput against
/// regions × threads / latency.
fn latency_bound(bench: &Bench, regions: usize, threads: usize, latency: Duration) -> Row {
    let ideal = (regions * threads) as f64 / latency.as_secs_f64();
    let matches = (ideal * STEADY.as_secs_f64()) as usize;
    let config = WorldConfig {
        regions: (1..=regions).map(|r| format!("us-east-{r}")).collect(),
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        allocator_latency: latency,
        allocator_threads: Some(threads),
        ..bench.world()
    };
    Row {
        scenario: "3 latency-bound",
        setup: format!(
            "latency {} ms, {regions} region(s) × {threads} threads, backlog {matches} matches",
            latency.as_millis()
        ),
        runs: bench.repeat(|| backlog(config.clone(), matches, &[10.0])),
        ideal: Some(ideal),
        throughput: true,
        waits: false,
    }
}

/// Scenario 4: moderate load; time from a match on the stream to its AssignTickets.
fn time_to_assignment(bench: &Bench) -> Row {
    let config = WorldConfig {
        fleet_per_region: 2000,
        session: Duration::from_secs(3600),
        interval: Duration::from_millis(100),
        ..bench.world()
    };
    let run = || {
        let mut world = World::start(config.clone());
        let (director, drain) = start_quietly(&mut world);
        let sim_started = sim_cpu();
        let players = 2000;
        let regions = world.config.regions.len() as u64;
        let started = Instant::now();
        for player in 0..players {
            world.add_player_near((player / 4 % regions) as usize, 10.0);
            let due = started + Duration::from_micros(player * 5_000);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        finish(
            &world,
            director,
            drain,
            players as usize / 4,
            None,
            sim_started,
        )
    };
    Row {
        scenario: "4 time-to-assignment",
        setup: "200 players/s for 10 s, latency 0, defaults".to_string(),
        runs: bench.repeat(run),
        ideal: None,
        throughput: false,
        waits: true,
    }
}

/// Scenario 6: ALLOCATE_RATE_LIMIT below what the defaults could do at 20 ms; the rate should
/// be the limit's.
fn rate_limited(bench: &Bench, per_region: f64) -> Row {
    let regions = 2.0;
    let ideal = regions * per_region;
    let matches = (ideal * STEADY.as_secs_f64()) as usize;
    let config = WorldConfig {
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        allocator_latency: Duration::from_millis(20),
        allocate_rate_limit: Some(per_region),
        ..bench.world()
    };
    Row {
        scenario: "6 rate limit",
        setup: format!(
            "ALLOCATE_RATE_LIMIT={per_region} per region, latency 20 ms, defaults, backlog {matches} matches"
        ),
        runs: bench.repeat(|| backlog(config.clone(), matches, &[10.0])),
        ideal: Some(ideal),
        throughput: true,
        waits: false,
    }
}

/// Scenario 7: three regions, each with its own allocator at 20 ms and 8 threads; with `hung`,
/// that region's allocator answers no call. The healthy regions' rate against their ideal, and
/// their waits from stream to assignment, next to the same run with no region hanging.
fn regions_alone(bench: &Bench, hung: Option<&str>) -> Row {
    let threads = 8;
    let latency = Duration::from_millis(20);
    let regions: Vec<String> = (1..=3).map(|r| format!("us-east-{r}")).collect();
    let healthy = regions.len() - usize::from(hung.is_some());
    let ideal = (healthy * threads) as f64 / latency.as_secs_f64();
    let per_region = (threads as f64 / latency.as_secs_f64() * STEADY.as_secs_f64()) as usize;
    let config = WorldConfig {
        regions,
        fleet_per_region: per_region,
        session: Duration::from_secs(3600),
        allocator_latency: latency,
        allocator_threads: Some(threads),
        allocator_per_region: true,
        hang: hung.map(String::from),
        ..bench.world()
    };
    let run = || {
        let mut world = World::start(config.clone());
        for player in 0..per_region * 3 * 4 {
            world.add_player_only_near(player / 4 % 3, 10.0);
        }
        let (director, drain) = start_quietly(&mut world);
        let sim_started = sim_cpu();
        finish(
            &world,
            director,
            drain,
            per_region * healthy,
            None,
            sim_started,
        )
    };
    Row {
        scenario: "7 regions alone",
        setup: format!(
            "3 regions, an allocator each at 20 ms, {threads} threads per region, backlog {per_region} matches per region; {}",
            hung.map_or("no region hangs".to_string(), |r| format!("{r}'s allocator hangs: the 2 others"))
        ),
        runs: bench.repeat(run),
        ideal: Some(ideal),
        throughput: true,
        waits: true,
    }
}

/// Scenario 5: many profiles; Director CPU and memory idle and under a backlog.
fn profiles_scale(bench: &Bench, label: &str, regions: usize, bands: usize) -> Row {
    // About six seconds of backlog at what these sizes reach here.
    let matches = if regions * bands <= 10 {
        30_000
    } else {
        12_000
    };
    let config = WorldConfig {
        regions: (0..regions).map(|r| format!("region-{r:02}")).collect(),
        ranges: (0..bands)
            .map(|b| {
                let top = if b + 1 == bands { 9999 } else { b * 10 + 9 };
                format!("{}-{top}", b * 10)
            })
            .collect::<Vec<_>>()
            .join(","),
        fleet_per_region: matches,
        session: Duration::from_secs(3600),
        ..bench.world()
    };
    let run = || {
        let mut world = World::start(config.clone());
        let (director, drain) = start_quietly(&mut world);
        let idle_window = Duration::from_secs(3);
        std::thread::sleep(Duration::from_secs(1));
        let before = director.cpu_time();
        std::thread::sleep(idle_window);
        let idle = director.cpu_time().saturating_sub(before);
        let sim_started = sim_cpu();
        for player in 0..matches * 4 {
            // Four consecutive players share a region and a band, so every player is matched.
            let group = player / 4;
            let band = group / regions % bands;
            world.add_player_only_near(group % regions, (band * 10 + 5) as f64);
        }
        let idle_per_second = idle.as_secs_f64() / idle_window.as_secs_f64();
        let mut measured = finish(
            &world,
            director,
            drain,
            matches,
            Some(idle_per_second),
            sim_started,
        );
        measured.cpu = measured.cpu.saturating_sub(before + idle);
        measured
    };
    Row {
        scenario: "5 profiles",
        setup: format!(
            "{label} = {} profiles, backlog {matches} matches, defaults",
            regions * bands
        ),
        runs: bench.repeat(run),
        ideal: None,
        throughput: true,
        waits: false,
    }
}

/// Puts `matches` matches' worth of players in the pool, spread over the regions and over
/// `latencies` (one per band to fill), then runs the Director until all are assigned.
fn backlog(config: WorldConfig, matches: usize, latencies: &[f64]) -> Measured {
    let mut world = World::start(config);
    let regions = world.config.regions.len();
    for player in 0..matches * 4 {
        let group = player / 4;
        let latency = latencies[group / regions % latencies.len()];
        world.add_player_only_near(group % regions, latency);
    }
    let (director, drain) = start_quietly(&mut world);
    let sim_started = sim_cpu();
    finish(&world, director, drain, matches, None, sim_started)
}

/// Starts the Director with warnings only, draining its log so that it never blocks on the pipe.
pub(crate) fn start_quietly(world: &mut World) -> (Director, std::thread::JoinHandle<()>) {
    let mut director = world.start_director("warn");
    let log = director.log_lines();
    let drain = std::thread::spawn(move || log.for_each(drop));
    (director, drain)
}

/// This process's CPU time so far, and when it was read.
fn sim_cpu() -> (Duration, Instant) {
    (cpu_time_of(std::process::id()), Instant::now())
}

/// Waits until `matches` matches are assigned (at most two minutes), then measures and stops.
fn finish(
    world: &World,
    mut director: Director,
    drain: std::thread::JoinHandle<()>,
    matches: usize,
    idle_cpu_per_second: Option<f64>,
    (sim_cpu_at_start, started): (Duration, Instant),
) -> Measured {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up && assigned_matches(world) < matches {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sim_cores = (sim_cpu().0.saturating_sub(sim_cpu_at_start)).as_secs_f64()
        / started.elapsed().as_secs_f64();
    let cpu = director.cpu_time();
    let peak_rss_kib = director.peak_rss_kib();
    director.terminate();
    director.wait_exit(EXIT_BOUND);
    let _ = drain.join();
    let allocator_connections = world
        .allocators()
        .map(|allocator| allocator.state().peers.len())
        .sum();
    let om = world.doubles.om.state();
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
        idle_cpu_per_second,
        peak_rss_kib,
        p50: quantile(&mut waits, 0.5),
        p99: quantile(&mut waits, 0.99),
        sim_cores,
        allocator_connections,
    }
}

fn assigned_matches(world: &World) -> usize {
    world.doubles.om.state().assigned_matches
}
