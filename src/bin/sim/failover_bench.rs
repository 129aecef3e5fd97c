//! Bench scenario 9: two replicas with leader election at the default timings (LEASE_DURATION
//! 15 s, LEASE_RENEW_DEADLINE 10 s, LEASE_RETRY_PERIOD 2 s), players arriving all along. How long
//! matchmaking pauses when the leader is killed (a node failure) and when it gets SIGTERM (a
//! rollout): from that moment to the new leader's first FetchMatches, and to the first
//! assignment after it.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agones_openmatch_director::doubles::apiserver::FakeApiServer;
use agones_openmatch_director::doubles::director::Director;

use crate::bench::{start_quietly, Bench};
use crate::bench_report::{cell, json_spread, Spread};
use crate::world::{lease_holder, replica_host, Arrivals, World, WorldConfig, EXIT_BOUND, LEASE};

const ARRIVALS_PER_SECOND: f64 = 40.0;
/// Matchmaking before the leader goes, with the standby started.
const STEADY: Duration = Duration::from_secs(3);

/// Seconds of each run: after a kill and after a SIGTERM, to the new leader's first FetchMatches
/// and to the first assignment.
pub struct FailoverFigures {
    runs: Vec<[f64; 4]>,
}

/// Starts replica `name`, its log drained.
fn replica(world: &mut World, name: &str) -> (Director, JoinHandle<()>) {
    world.as_replica(name);
    start_quietly(world)
}

/// Runs the world (players arriving) until `done` holds; gives up after two minutes.
fn step_until(
    world: &mut World,
    arrivals: &mut Arrivals,
    what: &str,
    done: impl Fn(&World) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(120);
    while !done(world) {
        assert!(
            Instant::now() < give_up,
            "sim: timed out waiting for {what}"
        );
        world.step(arrivals);
    }
}

/// Seconds from `since` to the first FetchMatches of replica `name`, and to the first assignment
/// after `since`; `None` until both happened.
fn pause(world: &World, since: Instant, name: &str) -> Option<(f64, f64)> {
    let om = world.doubles.om.state();
    let host = replica_host(name);
    let fetch = om
        .fetch_times
        .iter()
        .find(|(at, h)| *h == host && *at >= since)?
        .0;
    let assignment = om
        .matches
        .values()
        .filter_map(|m| m.assigned_at)
        .filter(|at| *at >= fetch)
        .min()?;
    Some((
        (fetch - since).as_secs_f64(),
        (assignment - since).as_secs_f64(),
    ))
}

/// After [`STEADY`] of matchmaking, `end` ends the leader; returns the pause until `successor`
/// fetches, and until a match is assigned.
fn handover(
    world: &mut World,
    arrivals: &mut Arrivals,
    end: impl FnOnce(),
    successor: &str,
) -> (f64, f64) {
    let steady = Instant::now() + STEADY;
    step_until(world, arrivals, "steady state", |_| {
        Instant::now() >= steady
    });
    let ended = Instant::now();
    end();
    step_until(world, arrivals, "the successor's first assignment", |w| {
        pause(w, ended, successor).is_some()
    });
    pause(world, ended, successor).expect("the successor took over")
}

fn one_run(bench: &Bench) -> [f64; 4] {
    let config = WorldConfig {
        fleet_per_region: 100_000,
        session: Duration::from_secs(3600),
        ..bench.world()
    };
    let mut world = World::start(config);
    world.doubles.om.state().keep_requests = true;
    let api = FakeApiServer::start("token");
    let _account = world.doubles.env.elect_on(&api, LEASE, "token");
    let holds = |name: &str| lease_holder(&api).as_deref() == Some(name);
    let mut arrivals = Arrivals::new(ARRIVALS_PER_SECOND);
    let (mut a, a_log) = replica(&mut world, "a");
    step_until(&mut world, &mut arrivals, "a to lead", |_| holds("a"));
    let (mut b, b_log) = replica(&mut world, "b");
    let (kill_fetch, kill_assign) = handover(&mut world, &mut arrivals, || a.kill(), "b");
    let (mut c, c_log) = replica(&mut world, "c");
    let (term_fetch, term_assign) = handover(&mut world, &mut arrivals, || b.terminate(), "c");
    b.wait_exit(EXIT_BOUND);
    c.terminate();
    c.wait_exit(EXIT_BOUND);
    for log in [a_log, b_log, c_log] {
        let _ = log.join();
    }
    [kill_fetch, kill_assign, term_fetch, term_assign]
}

pub fn run(bench: &Bench) -> FailoverFigures {
    let runs = (0..bench.runs)
        .map(|run| {
            let figures = one_run(bench);
            eprintln!(
                "sim: failover run {}/{}: {figures:.2?} s",
                run + 1,
                bench.runs
            );
            figures
        })
        .collect();
    FailoverFigures { runs }
}

impl FailoverFigures {
    /// Figure `index` over the runs.
    fn spread(&self, index: usize) -> Option<Spread> {
        Spread::of(self.runs.iter().map(|run| run[index]))
    }

    /// The scenario's Markdown table.
    pub fn markdown(&self) -> String {
        let cells: Vec<String> = (0..4).map(|i| cell(self.spread(i), 1)).collect();
        format!(
            "\n| scenario | setup | kill -9: first fetch s | kill -9: first assignment s | SIGTERM: first fetch s | SIGTERM: first assignment s |\n|---|---|---|---|---|---|\n| 9 failover | 2 replicas, Lease 15 s / renew 10 s / retry 2 s, {ARRIVALS_PER_SECOND} players/s | {} |\n",
            cells.join(" | ")
        )
    }

    /// The figures as JSON (medians and ranges).
    pub fn json(&self) -> String {
        let names = [
            "kill_first_fetch_s",
            "kill_first_assignment_s",
            "sigterm_first_fetch_s",
            "sigterm_first_assignment_s",
        ];
        let fields: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("\"{name}\": {}", json_spread(self.spread(i))))
            .collect();
        format!("{{\"scenario\": \"9 failover\", {}}}", fields.join(", "))
    }
}
