//! Liveness and readiness.
//!
//! *Live*: every fetcher and worker thread is running and has either made progress within its
//! limit (its longest legitimate call chain plus a margin) or is waiting for work (the interval,
//! an empty queue, a full queue). *Ready*: the latest FetchMatches of every profile succeeded (a
//! standby of leader election, which does not fetch, skips this), and at least one region can
//! allocate: one of its allocator channels is connected and its circuit breaker is closed. A warm
//! standby is ready, so that a rollout can go on while it waits for the Lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grpcio::{Channel, ConnectivityState};

use crate::circuit::Circuit;
use crate::sync::lock;

/// One thread's signs of life.
pub struct Heartbeat {
    name: String,
    limit: Duration,
    origin: Instant,
    /// Milliseconds since `origin` of the last progress, or [`WAITING`]: one atomic, so that a
    /// probe never sees a wait ended without the progress that ends it.
    last_progress_ms: AtomicU64,
    exited: AtomicBool,
}

/// `last_progress_ms` while the thread waits for work.
const WAITING: u64 = u64::MAX;

impl Heartbeat {
    /// Notes that the thread made progress.
    pub fn progress(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(WAITING - 1);
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// Runs `wait` (a wait for work of unbounded length) with the thread counted as waiting.
    pub fn waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.last_progress_ms.store(WAITING, Ordering::Relaxed);
        let result = wait();
        self.progress();
        result
    }

    /// Notes that the thread ended.
    pub fn exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }

    /// `None` when healthy, else what is wrong.
    fn problem(&self, now: Duration, stopping: bool) -> Option<String> {
        if self.exited.load(Ordering::Relaxed) {
            return (!stopping).then(|| format!("thread {} has ended", self.name));
        }
        let since = match self.last_progress_ms.load(Ordering::Relaxed) {
            WAITING => return None,
            ms => Duration::from_millis(ms),
        };
        let quiet = now.saturating_sub(since);
        (quiet > self.limit).then(|| {
            format!(
                "thread {} made no progress for {:.1}s (limit {:.1}s)",
                self.name,
                quiet.as_secs_f64(),
                self.limit.as_secs_f64()
            )
        })
    }
}

/// Health of the whole Director.
pub struct Health {
    origin: Instant,
    heartbeats: Mutex<Vec<Arc<Heartbeat>>>,
    last_fetch: Mutex<BTreeMap<String, Result<(), String>>>,
    allocator_channels: Mutex<BTreeMap<String, Vec<Channel>>>,
    circuits: Mutex<BTreeMap<String, Arc<Circuit>>>,
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Nothing registered yet.
    pub fn new() -> Health {
        Health {
            origin: Instant::now(),
            heartbeats: Mutex::new(Vec::new()),
            last_fetch: Mutex::new(BTreeMap::new()),
            allocator_channels: Mutex::new(BTreeMap::new()),
            circuits: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
        }
    }

    /// A heartbeat for a thread whose work between two signs of progress takes at most `limit`.
    pub fn register(&self, name: &str, limit: Duration) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat {
            name: name.to_string(),
            limit,
            origin: self.origin,
            last_progress_ms: AtomicU64::new(0),
            exited: AtomicBool::new(false),
        });
        heartbeat.progress();
        lock(&self.heartbeats).push(Arc::clone(&heartbeat));
        heartbeat
    }

    /// Records how the latest FetchMatches of `profile` ended.
    pub fn fetch_finished(&self, profile: &str, result: Result<(), String>) {
        lock(&self.last_fetch).insert(profile.to_string(), result);
    }

    /// Records the allocator channels `region`'s workers use now.
    pub fn allocator_channels(&self, region: &str, channels: Vec<Channel>) {
        lock(&self.allocator_channels).insert(region.to_string(), channels);
    }

    /// Records `region`'s circuit breaker.
    pub fn allocator_circuit(&self, region: &str, circuit: Arc<Circuit>) {
        lock(&self.circuits).insert(region.to_string(), circuit);
    }

    /// Whether each region's circuit refuses calls now.
    pub fn circuits_open(&self) -> BTreeMap<String, bool> {
        lock(&self.circuits)
            .iter()
            .map(|(region, circuit)| (region.clone(), circuit.is_open()))
            .collect()
    }

    /// Whether each region can allocate now: `Ok`, or why not.
    pub fn allocators(&self) -> BTreeMap<String, Result<(), String>> {
        let circuits = lock(&self.circuits);
        lock(&self.allocator_channels)
            .iter()
            .map(|(region, channels)| {
                let states: Vec<ConnectivityState> = channels
                    .iter()
                    .map(|c| c.check_connectivity_state(true))
                    .collect();
                let up = if !states.contains(&ConnectivityState::GRPC_CHANNEL_READY) {
                    Err(format!("no connected channel {states:?}"))
                } else if circuits.get(region).is_some_and(|c| c.is_open()) {
                    Err("circuit open after repeated failures".to_string())
                } else {
                    Ok(())
                };
                (region.clone(), up)
            })
            .collect()
    }

    /// From now on, ended threads are expected.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Liveness: `Ok` with a summary, or `Err` with every problem.
    pub fn liveness(&self) -> Result<String, String> {
        let now = self.origin.elapsed();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let heartbeats = lock(&self.heartbeats);
        let problems: Vec<String> = heartbeats
            .iter()
            .filter_map(|h| h.problem(now, stopping))
            .collect();
        if problems.is_empty() {
            Ok(format!("ok: {} threads alive\n", heartbeats.len()))
        } else {
            Err(problems.join("\n") + "\n")
        }
    }

    /// Readiness: `Ok` with a summary, or `Err` with every problem. A `standby` (leader election,
    /// another replica leads) is not expected to have fetched.
    pub fn readiness(&self, standby: bool) -> Result<String, String> {
        let mut problems = Vec::new();
        let last_fetch = lock(&self.last_fetch);
        if !standby {
            if last_fetch.is_empty() {
                problems.push("no FetchMatches has finished yet".to_string());
            }
            for (profile, result) in last_fetch.iter() {
                if let Err(error) = result {
                    problems.push(format!("last FetchMatches for {profile} failed: {error}"));
                }
            }
        }
        let allocators = self.allocators();
        let down: Vec<String> = allocators
            .iter()
            .filter_map(|(region, up)| up.as_ref().err().map(|why| format!("{region}: {why}")))
            .collect();
        let ready = allocators.len() - down.len();
        if ready == 0 {
            problems.push(format!("no region can allocate: {}", down.join("; ")));
        }
        if problems.is_empty() {
            let down = if down.is_empty() {
                String::new()
            } else {
                format!("; regions down: {}", down.join("; "))
            };
            let fetching = if standby {
                "standby (another replica leads)".to_string()
            } else {
                format!("{} profiles fetched", last_fetch.len())
            };
            Ok(format!(
                "ok: {fetching}, {ready}/{} regions can allocate{down}\n",
                allocators.len()
            ))
        } else {
            Err(problems.join("\n") + "\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_threads_are_live_and_quiet_busy_ones_are_not() {
        let health = Health::new();
        let quick = health.register("quick", Duration::ZERO);
        let patient = health.register("patient", Duration::from_secs(60));
        patient.progress();
        quick.waiting(|| ());
        std::thread::sleep(Duration::from_millis(5));
        let problem = health.liveness().unwrap_err();
        assert!(
            problem.contains("thread quick made no progress"),
            "{problem}"
        );
        assert!(!problem.contains("patient"));
        quick.waiting(|| assert!(health.liveness().is_ok()));
    }

    #[test]
    fn ended_threads_are_dead_unless_stopping() {
        let health = Health::new();
        health.register("worker", Duration::from_secs(60)).exited();
        assert_eq!(health.liveness().unwrap_err(), "thread worker has ended\n");
        health.stopping();
        assert!(health.liveness().is_ok());
    }

    #[test]
    fn not_ready_until_fetches_succeed() {
        let health = Health::new();
        assert!(health
            .readiness(false)
            .unwrap_err()
            .contains("no FetchMatches has finished yet"));
        health.fetch_finished("p", Err("UNAVAILABLE: down".into()));
        assert!(health
            .readiness(false)
            .unwrap_err()
            .contains("last FetchMatches for p failed: UNAVAILABLE: down"));
        let standby = health.readiness(true).unwrap_err();
        assert!(!standby.contains("FetchMatches"), "{standby}");
        assert!(standby.contains("no region can allocate"), "{standby}");
    }
}
