//! `sim soak`: the Director for some minutes against the doubles, under random faults (allocator
//! UNAVAILABLE, hangs and resets, Open Match restarts, certificate rotations, slow HTTP clients),
//! then SIGTERM. It fails when the accounting does not add up, a ticket is assigned twice or to a
//! game server of another region, a probe does not answer within a second, RSS grows by more than
//! 10 % after the first minute, or the Director outlives its shutdown bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::world::{Arrivals, World, WorldConfig, EXIT_BOUND};
use crate::{flag_value, seconds};
use agones_openmatch_director::doubles::director::{operations_address_in, Director};
use agones_openmatch_director::doubles::hostile::{probe_within_a_second, HostileClients};
use agones_openmatch_director::doubles::openmatch::TicketStatus;
use agones_openmatch_director::doubles::wait::wait_for;
use agones_openmatch_director::pipeline::{Totals, ACCOUNTING_PREFIX};

/// Soak settings.
pub struct Options {
    duration: Duration,
    arrival_rate: f64,
    /// The `director` binary to soak (for example the shipped static one); `None`: the one next
    /// to this simulator.
    director: Option<std::path::PathBuf>,
    /// The fault kinds to draw from (all by default; none to measure the load alone).
    faults: Vec<Fault>,
    /// The share of matches that top up a running game's backfill.
    backfill_ratio: f64,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            duration: Duration::from_secs(600),
            arrival_rate: 100.0,
            director: None,
            faults: FAULTS.to_vec(),
            backfill_ratio: 0.2,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--minutes" => {
                    options.duration = seconds(60.0 * flag_value::<f64>(flag, args.next())?)
                }
                "--arrival-rate" => options.arrival_rate = flag_value(flag, args.next())?,
                "--director" => options.director = Some(flag_value(flag, args.next())?),
                "--backfill" => options.backfill_ratio = flag_value(flag, args.next())?,
                "--faults" => {
                    let names: String = flag_value(flag, args.next())?;
                    options.faults = names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(|name| {
                            FAULTS
                                .into_iter()
                                .find(|f| format!("{f:?}") == name)
                                .ok_or_else(|| format!("--faults: unknown fault {name}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(options)
    }
}

/// A fault the soak injects; each lasts until the next one starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    /// One region's allocator answers UNAVAILABLE to every call.
    AllocatorUnavailable,
    /// One region's allocator answers no call before the Director's deadline.
    AllocatorHang,
    /// The allocator restarts: its connections are reset.
    AllocatorReset,
    /// Open Match restarts: streams and calls in flight are cut.
    OpenMatchRestart,
    /// A new client certificate is published through a `..data` swap.
    CertificateRotation,
    /// 200 silent, trickling and oversized HTTP clients hold the operations port.
    SlowHttpClients,
}

const FAULTS: [Fault; 6] = [
    Fault::AllocatorUnavailable,
    Fault::AllocatorHang,
    Fault::AllocatorReset,
    Fault::OpenMatchRestart,
    Fault::CertificateRotation,
    Fault::SlowHttpClients,
];

/// How long each fault lasts before the next one.
const FAULT_PERIOD: Duration = Duration::from_secs(5);

/// The fault in force, and what it holds.
struct Injector {
    kinds: Vec<Fault>,
    /// The kinds not injected yet, in random order: each kind comes once before any comes twice,
    /// so that the RSS baseline after the first minute includes every kind's first use.
    first_round: Vec<Fault>,
    counts: HashMap<Fault, usize>,
    hostile: Option<HostileClients>,
}

impl Injector {
    fn new(kinds: Vec<Fault>, world: &mut World) -> Injector {
        let mut first_round = kinds.clone();
        for i in (1..first_round.len()).rev() {
            let j = world.random_below(i as u64 + 1) as usize;
            first_round.swap(i, j);
        }
        Injector {
            kinds,
            first_round,
            counts: HashMap::new(),
            hostile: None,
        }
    }

    /// Ends the current fault and starts the next: a kind of the first round, then random ones.
    fn next(&mut self, world: &mut World, operations: SocketAddr) {
        self.end(world);
        if self.kinds.is_empty() {
            return;
        }
        let fault = match self.first_round.pop() {
            Some(fault) => fault,
            None => self.kinds[world.random_below(self.kinds.len() as u64) as usize],
        };
        let which = world.random_below(world.config.regions.len() as u64) as usize;
        let region = world.config.regions[which].clone();
        match fault {
            Fault::AllocatorUnavailable => {
                let mut allocator = world.doubles.allocator.state();
                allocator
                    .failing_regions
                    .insert(region, grpcio::RpcStatusCode::UNAVAILABLE);
            }
            Fault::AllocatorHang => {
                let mut allocator = world.doubles.allocator.state();
                allocator
                    .hanging_regions
                    .insert(region, Duration::from_secs(60));
            }
            Fault::AllocatorReset => world.doubles.allocator.restart(),
            Fault::OpenMatchRestart => world.doubles.om.restart(),
            Fault::CertificateRotation => world.rotate_client_certificate(),
            Fault::SlowHttpClients => self.hostile = Some(HostileClients::open(operations)),
        }
        *self.counts.entry(fault).or_default() += 1;
    }

    /// Ends the fault in force.
    fn end(&mut self, world: &mut World) {
        let mut allocator = world.doubles.allocator.state();
        allocator.failing_regions.clear();
        allocator.hanging_regions.clear();
        self.hostile = None;
    }

    fn summary(&self) -> String {
        FAULTS
            .iter()
            .map(|f| format!("{f:?} {}", self.counts.get(f).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the soak watches in the Director's log: its operations address and accounting line.
#[derive(Default)]
struct LogWatch {
    operations: Option<SocketAddr>,
    accounting: Option<String>,
    errors: usize,
}

fn watch_log(director: &mut Director) -> Arc<Mutex<LogWatch>> {
    let watch = Arc::new(Mutex::new(LogWatch::default()));
    let lines = director.log_lines();
    let shared = Arc::clone(&watch);
    std::thread::spawn(move || {
        for line in lines {
            let mut watch = shared.lock().unwrap();
            if let Some(address) = operations_address_in(&line) {
                watch.operations = Some(address);
            }
            if line.contains(ACCOUNTING_PREFIX) {
                watch.accounting = Some(line.clone());
            }
            if line.contains(" ERROR ") {
                watch.errors += 1;
            }
        }
    });
    watch
}

/// Figures of the run, and the checks it failed.
#[derive(Default)]
struct Findings {
    failures: Vec<String>,
}

impl Findings {
    fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }
}

pub fn run(options: Options) -> ExitCode {
    let config = WorldConfig {
        fleet_per_region: 1_000,
        session: Duration::from_secs(20),
        operations_port: true,
        director: options.director.clone(),
        // The HTTP listener's connection threads come and go by the thousand here. A glibc build
        // keeps the stacks of ended threads (up to 40 MiB) and a malloc arena per busy thread;
        // without either, like the shipped musl binary, RSS growth measures the Director rather
        // than glibc's caches. (Ignored by the static binary.)
        director_env: vec![(
            "GLIBC_TUNABLES".into(),
            "glibc.pthread.stack_cache_size=0:glibc.malloc.arena_max=2".into(),
        )],
        backfill_ratio: options.backfill_ratio,
        ..WorldConfig::default()
    };
    let mut world = World::start(config);
    world.doubles.allocator.state().keep_requests = true;
    world.doubles.om.state().keep_requests = true;
    let mut director = world.start_director("info,grpcio=warn");
    let log = watch_log(&mut director);
    let Some(operations) = wait_for(Duration::from_secs(10), || log.lock().unwrap().operations)
    else {
        eprintln!("soak: the Director did not serve its operations port within 10 s");
        return ExitCode::FAILURE;
    };
    let baseline_at = Duration::from_secs(60).min(options.duration / 2);
    eprintln!(
        "soak: {:.1} min, {} players/s, a fault every {FAULT_PERIOD:?} (each kind once, then at random); RSS baseline after {baseline_at:?}",
        options.duration.as_secs_f64() / 60.0,
        options.arrival_rate
    );
    let mut findings = Findings::default();
    let threads_at_start = director.threads();
    let mut injector = Injector::new(options.faults.clone(), &mut world);
    let started = Instant::now();
    let mut arrivals = Arrivals::new(options.arrival_rate);
    let (mut baseline_rss, mut probes, mut probe_failures) = (None, 0, 0);
    let mut baseline_anonymous = 0;
    let mut rss_by_minute = Vec::new();
    let (mut last_fault, mut last_second) = (started, started);
    while started.elapsed() < options.duration {
        world.step(&mut arrivals);
        if last_second.elapsed() >= Duration::from_secs(1) {
            last_second = Instant::now();
            probes += 1;
            if let Err(problem) = probe_within_a_second(operations, "/healthz") {
                probe_failures += 1;
                eprintln!("soak: probe failed: {problem}");
            }
            if baseline_rss.is_none() && started.elapsed() >= baseline_at {
                let settled = settled_rss(&director, threads_at_start, &mut injector, &mut world);
                (baseline_rss, baseline_anonymous) = (Some(settled.0), settled.1);
            }
            if started.elapsed() >= Duration::from_secs(60 * (rss_by_minute.len() as u64 + 1)) {
                rss_by_minute.push(director.rss_kib());
            }
        }
        if last_fault.elapsed() >= FAULT_PERIOD {
            last_fault = Instant::now();
            injector.next(&mut world, operations);
        }
    }
    let (end_rss, end_anonymous) =
        settled_rss(&director, threads_at_start, &mut injector, &mut world);
    let baseline_rss = baseline_rss.unwrap_or(end_rss);

    director.terminate();
    let terminated = Instant::now();
    let bound = EXIT_BOUND;
    let exited = wait_for(bound + Duration::from_secs(10), || {
        (!director.is_running()).then_some(())
    });
    let shutdown = terminated.elapsed();
    let code = if exited.is_some() {
        director.wait_exit(Duration::ZERO).code()
    } else {
        None
    };
    drop(director);
    findings.check(shutdown <= bound, || {
        format!("shutdown took {shutdown:.1?}, over its bound of {bound:?}")
    });
    findings.check(code == Some(0), || format!("exit code {code:?}"));
    findings.check(probe_failures == 0, || {
        format!("{probe_failures} of {probes} /healthz probes did not answer within a second")
    });
    let growth = end_rss as f64 / baseline_rss.max(1) as f64 - 1.0;
    findings.check(growth <= 0.10, || {
        format!(
            "RSS grew {:.1} % (from {baseline_rss} KiB to {end_rss} KiB)",
            growth * 100.0
        )
    });

    let accounting = log.lock().unwrap().accounting.clone();
    let totals = accounting.as_deref().and_then(Totals::from_accounting_line);
    findings.check(totals.is_some_and(|t| t.adds_up()), || {
        format!("the accounting line is missing or does not add up: {accounting:?}")
    });
    // The game servers outlive the Director: their next acknowledgement assigns the top-ups.
    world.acknowledge_backfills();
    check_assignments(&world, totals.unwrap_or_default(), &mut findings);

    let om = world.doubles.om.state();
    eprintln!(
        "soak: {:.1} min; {} players, {} matches streamed ({} topping up a backfill), {} tickets assigned by a backfill's game server, {} Allocate calls; faults: {}",
        started.elapsed().as_secs_f64() / 60.0,
        om.tickets.len(),
        om.matches.len(),
        om.matches.values().filter(|m| m.tops_up.is_some()).count(),
        om.assigned_by_backfill,
        world.doubles.allocator.state().calls,
        injector.summary()
    );
    eprintln!(
        "soak: {}; {} ERROR lines",
        accounting.unwrap_or_default().trim(),
        log.lock().unwrap().errors
    );
    eprintln!(
        "soak: RSS {baseline_rss} KiB after {baseline_at:?}, {end_rss} KiB at the end ({:+.1} %; anonymous {baseline_anonymous} → {end_anonymous} KiB); at the end of each minute: {rss_by_minute:?} KiB; /healthz {probes} probes, {probe_failures} slow; shutdown {shutdown:.2?} (bound {bound:?}), exit code {code:?}",
        growth * 100.0
    );
    if findings.failures.is_empty() {
        eprintln!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        for failure in &findings.failures {
            eprintln!("soak: FAIL {failure}");
        }
        ExitCode::FAILURE
    }
}

/// Every ticket assigned once, to a game server allocated for its match in the match's region (a
/// top-up's: the game server of the match that started its game);
/// every match the double streamed accounted for; nothing left to the pending-release timeout
/// except what the Director counted as abandoned.
fn check_assignments(world: &World, totals: Totals, findings: &mut Findings) {
    let om = world.doubles.om.state();
    let allocator = world.doubles.allocator.state();
    let mut allocations: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for a in &allocator.allocated {
        allocations
            .entry(a.match_id.as_str())
            .or_default()
            .push((a.region.as_str(), a.connection.as_str()));
    }
    let mut latest_match: HashMap<&str, (&str, Instant)> = HashMap::new();
    for (id, issued) in &om.matches {
        for ticket in &issued.ticket_ids {
            let entry = latest_match
                .entry(ticket)
                .or_insert((id, issued.streamed_at));
            if issued.streamed_at > entry.1 {
                *entry = (id, issued.streamed_at);
            }
        }
    }
    let region_of = |profile: &str| {
        world
            .config
            .regions
            .iter()
            .find(|r| profile.starts_with(&format!("latency-{r}-")))
            .cloned()
            .unwrap_or_default()
    };
    let (mut twice, mut wrong_region, mut pending) = (0, 0, 0);
    for ticket in &om.tickets {
        match &ticket.status {
            TicketStatus::Assigned { connection, times } => {
                twice += usize::from(*times > 1);
                let Some((match_id, _)) = latest_match.get(ticket.id.as_str()) else {
                    wrong_region += 1;
                    continue;
                };
                let issued = &om.matches[*match_id];
                let region = region_of(&issued.profile);
                let game = issued.tops_up.as_deref().unwrap_or(match_id);
                let allocated_here = allocations
                    .get(game)
                    .is_some_and(|list| list.iter().any(|(r, c)| *r == region && c == connection));
                wrong_region += usize::from(!allocated_here);
            }
            TicketStatus::Pending => pending += 1,
            TicketStatus::Available => {}
        }
    }
    findings.check(twice == 0, || {
        format!("{twice} tickets assigned more than once")
    });
    findings.check(wrong_region == 0, || {
        format!("{wrong_region} tickets assigned a game server not allocated for their match in its region")
    });
    findings.check(om.matches.len() as u64 == totals.received, || {
        format!(
            "Open Match streamed {} matches, the Director received {}",
            om.matches.len(),
            totals.received
        )
    });
    // Only the tickets of matches the Director counted as abandoned (Open Match unreachable for
    // the release) may still be pending, or have come back through the pending-release timeout.
    let abandoned_tickets = totals.abandoned * 4;
    let left_to_open_match = (pending + om.timed_out) as u64;
    findings.check(left_to_open_match <= abandoned_tickets, || {
        format!(
            "{pending} tickets left pending and {} returned by the pending-release timeout, but only {} abandoned matches counted",
            om.timed_out, totals.abandoned
        )
    });
}

/// RSS and its anonymous part (KiB) with no fault in force: the fault is ended and the Director's
/// threads are let fall back to their number before any fault (at most 5 s), so that what a fault
/// holds only while it lasts (200 hostile connections, a thread each) is not counted.
fn settled_rss(
    director: &Director,
    threads_at_start: u64,
    injector: &mut Injector,
    world: &mut World,
) -> (u64, u64) {
    injector.end(world);
    // One more thread: the connection of a probe may be open.
    wait_for(Duration::from_secs(5), || {
        (director.threads() <= threads_at_start + 1).then_some(())
    });
    (director.rss_kib(), director.anonymous_rss_kib())
}
