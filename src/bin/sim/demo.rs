//! `sim demo`: players arrive, the Director matches them to game servers, a live status line shows
//! it; Ctrl-C (or --duration) ends it and the Director's graceful shutdown is shown.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::world::{quantile, Arrivals, World, WorldConfig, EXIT_BOUND};
use crate::{flag_value, seconds};
use agones_openmatch_director::doubles::agones::Fleet;
use agones_openmatch_director::doubles::openmatch::TicketStatus;

/// Demo settings.
pub struct Options {
    duration: Option<Duration>,
    arrival_rate: f64,
    world: WorldConfig,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            duration: None,
            arrival_rate: 20.0,
            world: WorldConfig::default(),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let world = &mut options.world;
            match flag.as_str() {
                "--duration" => options.duration = Some(seconds(flag_value(flag, args.next())?)),
                "--arrival-rate" => options.arrival_rate = flag_value(flag, args.next())?,
                "--fleet" => world.fleet_per_region = flag_value(flag, args.next())?,
                "--session" => world.session = seconds(flag_value(flag, args.next())?),
                "--allocator-latency" => {
                    world.allocator_latency = Duration::from_millis(flag_value(flag, args.next())?)
                }
                "--error-rate" => world.error_rate = flag_value(flag, args.next())?,
                "--backfill" => world.backfill_ratio = flag_value(flag, args.next())?,
                "--outage" => world.outage = Some(flag_value(flag, args.next())?),
                "--threads" => world.allocator_threads = Some(flag_value(flag, args.next())?),
                "--regions" => {
                    let list: String = flag_value(flag, args.next())?;
                    world.regions = list.split(',').map(String::from).collect();
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(options)
    }
}

/// The status line's figures.
struct Status {
    waiting: usize,
    matches: usize,
    allocations: usize,
    in_play: usize,
    assigned: usize,
    topped_up: usize,
    p50: Duration,
    p99: Duration,
}

impl Status {
    fn read(world: &World) -> Status {
        let om = world.doubles.om.state();
        let mut waits: Vec<Duration> = om
            .tickets
            .iter()
            .filter_map(|t| Some(t.assigned_at? - t.created_at))
            .collect();
        let mut allocator = world.doubles.allocator.state();
        Status {
            waiting: om.count(|s| *s == TicketStatus::Available),
            matches: om.matches.len(),
            allocations: allocator.calls,
            in_play: allocator.fleet.as_mut().map_or(0, Fleet::allocated),
            assigned: waits.len(),
            topped_up: om.assigned_by_backfill,
            p50: quantile(&mut waits, 0.5),
            p99: quantile(&mut waits, 0.99),
        }
    }

    fn line(&self) -> String {
        format!(
            "players waiting {:>4} | matches {:>5} | Allocate calls {:>5} | servers in play {:>4} | tickets assigned {:>6} (by backfill {:>5}) | ticket wait p50 {:>6.0} ms p99 {:>6.0} ms",
            self.waiting,
            self.matches,
            self.allocations,
            self.in_play,
            self.assigned,
            self.topped_up,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

/// Prints Director log lines above the status line (WARN, ERROR and life-cycle lines only).
fn show_director_log(world_log: impl Iterator<Item = String>, screen: Arc<Mutex<()>>) {
    for line in world_log {
        let interesting = [
            "WARN",
            "ERROR",
            "Starting director",
            "Shutdown",
            "Director stopped",
        ]
        .iter()
        .any(|k| line.contains(k));
        if interesting {
            let _guard = screen.lock().unwrap();
            eprint!("\r\x1b[2K  director| {line}\n");
        }
    }
}

pub fn run(options: Options) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(error) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("sim: cannot handle Ctrl-C: {error}");
        return ExitCode::FAILURE;
    }
    let mut world = World::start(options.world.clone());
    let mut director = world.start_director("info,grpcio=warn");
    let screen = Arc::new(Mutex::new(()));
    let log = director.log_lines();
    let printer = {
        let screen = Arc::clone(&screen);
        std::thread::spawn(move || show_director_log(log, screen))
    };
    eprintln!(
        "sim: Open Match on 127.0.0.1:{}, Agones allocator (mTLS) on 127.0.0.1:{}; {} players/s; {} game servers per region; Ctrl-C to stop",
        world.doubles.om.port, world.doubles.allocator.port, options.arrival_rate, options.world.fleet_per_region
    );
    let started = Instant::now();
    let mut arrivals = Arrivals::new(options.arrival_rate);
    let mut last_draw = Instant::now();
    while !stop.load(Ordering::SeqCst) && options.duration.is_none_or(|d| started.elapsed() < d) {
        world.step(&mut arrivals);
        if last_draw.elapsed() >= Duration::from_millis(500) {
            last_draw = Instant::now();
            let line = Status::read(&world).line();
            let _guard = screen.lock().unwrap();
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!("\nsim: stopping the Director (SIGTERM) …");
    director.terminate();
    let code = director.wait_exit(EXIT_BOUND).code();
    let _ = printer.join();
    let status = Status::read(&world);
    let (players, timed_out) = {
        let om = world.doubles.om.state();
        (om.tickets.len(), om.timed_out)
    };
    eprintln!(
        "sim: ran {:.1}s; {} players, {} matches, {} Allocate calls, {} tickets assigned ({} by a backfill's game server), {} returned by Open Match's pending-release timeout; ticket creation→assignment p50 {:.0} ms, p99 {:.0} ms; director exit code {}",
        started.elapsed().as_secs_f64(),
        players,
        status.matches,
        status.allocations,
        status.assigned,
        status.topped_up,
        timed_out,
        status.p50.as_secs_f64() * 1e3,
        status.p99.as_secs_f64() * 1e3,
        code.map_or("none (signal)".to_string(), |c| c.to_string())
    );
    if code == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
