//! `sim demo`: players arrive, the Director matches them to game servers, a live status line shows
//! it; Ctrl-C (or --duration) ends it and the Director's graceful shutdown is shown. With
//! `--replicas 2`, two Directors elect a leader on a Lease of the Kubernetes API double, and
//! `--kill-leader-after` kills the leader to show the standby take over.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::world::{lease_holder, quantile, Arrivals, World, WorldConfig, EXIT_BOUND, LEASE};
use crate::{flag_value, seconds};
use agones_openmatch_director::doubles::agones::Fleet;
use agones_openmatch_director::doubles::apiserver::{FakeApiServer, ServiceAccount};
use agones_openmatch_director::doubles::director::Director;
use agones_openmatch_director::doubles::openmatch::TicketStatus;

/// Demo settings.
pub struct Options {
    duration: Option<Duration>,
    arrival_rate: f64,
    /// 1, or 2 replicas that elect a leader on a Lease of the Kubernetes API double.
    replicas: usize,
    /// With 2 replicas: when to kill the leader (`kill -9`), from the start.
    kill_leader_after: Option<Duration>,
    world: WorldConfig,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            duration: None,
            arrival_rate: 20.0,
            replicas: 1,
            kill_leader_after: None,
            world: WorldConfig::default(),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let world = &mut options.world;
            match flag.as_str() {
                "--duration" => options.duration = Some(seconds(flag_value(flag, args.next())?)),
                "--arrival-rate" => options.arrival_rate = flag_value(flag, args.next())?,
                "--replicas" => options.replicas = flag_value(flag, args.next())?,
                "--kill-leader-after" => {
                    options.kill_leader_after = Some(seconds(flag_value(flag, args.next())?))
                }
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
        if !(1..=REPLICAS.len()).contains(&options.replicas) {
            return Err("--replicas: 1 or 2".into());
        }
        if options.kill_leader_after.is_some() && options.replicas < 2 {
            return Err("--kill-leader-after needs --replicas 2".into());
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
    /// With 2 replicas: the one that holds the Lease.
    leader: Option<String>,
}

impl Status {
    fn read(world: &World, leader: Option<String>) -> Status {
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
            leader,
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
        ) + &self
            .leader
            .as_ref()
            .map_or(String::new(), |holder| format!(" | Lease holder {holder}"))
    }
}

/// Prints the log lines of a Director, marked `label`, above the status line (WARN, ERROR,
/// life-cycle and leadership lines only).
fn show_director_log(log: impl Iterator<Item = String>, label: String, screen: Arc<Mutex<()>>) {
    for line in log {
        let interesting = [
            "WARN",
            "ERROR",
            "Starting director",
            "Shutdown",
            "Director stopped",
            "leader",
            "Lease",
        ]
        .iter()
        .any(|k| line.contains(k));
        if interesting {
            let _guard = screen.lock().unwrap();
            eprint!("\r\x1b[2K  {label}| {line}\n");
        }
    }
}

/// The names (POD_NAME) of the replicas, in the order they start.
const REPLICAS: [&str; 2] = ["a", "b"];

/// A running Director and the thread that shows its log.
struct Replica {
    name: &'static str,
    director: Director,
    printer: JoinHandle<()>,
    killed: bool,
}

impl Replica {
    /// Starts replica `name` in `world` (with `elected`, as a replica of an elected pair), its log
    /// shown on `screen`.
    fn start(
        world: &mut World,
        name: &'static str,
        elected: bool,
        screen: &Arc<Mutex<()>>,
    ) -> Replica {
        let label = if elected {
            world.as_replica(name);
            format!("director {name}")
        } else {
            "director".to_string()
        };
        let mut director = world.start_director("info,grpcio=warn");
        let log = director.log_lines();
        let screen = Arc::clone(screen);
        let printer = std::thread::spawn(move || show_director_log(log, label, screen));
        Replica {
            name,
            director,
            printer,
            killed: false,
        }
    }

    /// SIGTERM unless killed, then how it ended, once it has exited.
    fn stop(mut self) -> Exit {
        if !self.killed {
            self.director.terminate();
        }
        let code = self.director.wait_exit(EXIT_BOUND).code();
        let _ = self.printer.join();
        Exit {
            name: self.name,
            code,
            killed: self.killed,
        }
    }
}

/// How a replica ended.
struct Exit {
    name: &'static str,
    /// Its exit code; `None` after a signal.
    code: Option<i32>,
    /// Whether the demo killed it (`--kill-leader-after`).
    killed: bool,
}

impl Exit {
    /// Killed on purpose, or exited with code 0.
    fn as_expected(&self) -> bool {
        self.killed || self.code == Some(0)
    }

    fn describe(&self) -> String {
        match (self.killed, self.code) {
            (true, _) => "killed".to_string(),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "exit code none (signal)".to_string(),
        }
    }
}

/// With 2 replicas: the Kubernetes API double they elect their leader on, and their service
/// account volume.
struct Election {
    api: FakeApiServer,
    _account: ServiceAccount,
}

impl Election {
    fn start(world: &mut World) -> Election {
        let api = FakeApiServer::start("token");
        let account = world.doubles.env.elect_on(&api, LEASE, "token");
        Election {
            api,
            _account: account,
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
    let election = (options.replicas > 1).then(|| Election::start(&mut world));
    let screen = Arc::new(Mutex::new(()));
    let mut replicas: Vec<Replica> = REPLICAS[..options.replicas]
        .iter()
        .map(|name| Replica::start(&mut world, name, election.is_some(), &screen))
        .collect();
    eprintln!(
        "sim: Open Match on 127.0.0.1:{}, Agones allocator (mTLS) on 127.0.0.1:{}; {} players/s; {} game servers per region; {}Ctrl-C to stop",
        world.doubles.om.port,
        world.doubles.allocator.port,
        options.arrival_rate,
        options.world.fleet_per_region,
        election.as_ref().map_or(String::new(), |e| format!(
            "replicas a and b elect a leader on Lease {LEASE} (Kubernetes API double on 127.0.0.1:{}); ",
            e.api.port
        )),
    );
    let started = Instant::now();
    let mut arrivals = Arrivals::new(options.arrival_rate);
    let mut last_draw = Instant::now();
    let leader = || election.as_ref().and_then(|e| lease_holder(&e.api));
    while !stop.load(Ordering::SeqCst) && options.duration.is_none_or(|d| started.elapsed() < d) {
        world.step(&mut arrivals);
        if options
            .kill_leader_after
            .is_some_and(|after| started.elapsed() >= after)
        {
            kill_leader(&mut replicas, leader(), &screen);
        }
        if last_draw.elapsed() >= Duration::from_millis(500) {
            last_draw = Instant::now();
            let line = Status::read(&world, leader()).line();
            let _guard = screen.lock().unwrap();
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!("\nsim: stopping (SIGTERM) …");
    let exits: Vec<_> = replicas.into_iter().map(Replica::stop).collect();
    let status = Status::read(&world, None);
    let (players, timed_out) = {
        let om = world.doubles.om.state();
        (om.tickets.len(), om.timed_out)
    };
    eprintln!(
        "sim: ran {:.1}s; {} players, {} matches, {} Allocate calls, {} tickets assigned ({} by a backfill's game server), {} returned by Open Match's pending-release timeout; ticket creation→assignment p50 {:.0} ms, p99 {:.0} ms; {}",
        started.elapsed().as_secs_f64(),
        players,
        status.matches,
        status.allocations,
        status.assigned,
        status.topped_up,
        timed_out,
        status.p50.as_secs_f64() * 1e3,
        status.p99.as_secs_f64() * 1e3,
        describe_exits(&exits, election.is_some())
    );
    if exits.iter().all(Exit::as_expected) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Kills the replica that leads now (`kill -9`, a node failure), once.
fn kill_leader(replicas: &mut [Replica], leader: Option<String>, screen: &Mutex<()>) {
    if replicas.iter().any(|r| r.killed) {
        return;
    }
    let Some(replica) = replicas
        .iter_mut()
        .find(|r| leader.as_deref() == Some(r.name))
    else {
        return;
    };
    replica.director.kill();
    replica.killed = true;
    let _guard = screen.lock().unwrap();
    eprint!(
        "\r\x1b[2Ksim: killed the leader, {} (kill -9): the standby takes over once the Lease has not been renewed for LEASE_DURATION\n",
        replica.name
    );
}

/// "director exit code 0", or each replica's exit.
fn describe_exits(exits: &[Exit], elected: bool) -> String {
    if !elected {
        return format!("director {}", exits[0].describe());
    }
    let each: Vec<String> = exits
        .iter()
        .map(|exit| format!("{} {}", exit.name, exit.describe()))
        .collect();
    format!("directors: {}", each.join(", "))
}
