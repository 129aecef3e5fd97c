//! The pipeline: one fetcher thread per profile ([`fetcher`]) → its region's bounded queue → that
//! region's fixed pool of allocator workers ([`worker`]).
//!
//! Every match taken off a FetchMatches stream ends in exactly one of three outcomes, counted in
//! [`Metrics::matches_finished`](crate::metrics::Metrics): *assigned*, *released* (tickets back in
//! the pool at once), or *abandoned* (Open Match could not be reached to release them; they return
//! after its pending-release timeout). [`accounting`] adds them up.

mod accounting;
mod fetcher;
mod job;
mod region;
mod services;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use accounting::{Totals, ACCOUNTING_PREFIX};
pub use fetcher::distinct_ticket_ids;
pub use job::{MatchJob, Outcome};
pub use region::{AllocatorChannels, AllocatorClients};
pub use services::{FetcherSettings, Services, WorkerSettings};

use crate::config::{Config, Timing};
use crate::profiles::Profile;
use crate::sync::Versioned;
use fetcher::Fetcher;
use job::release_queued;
use region::Region;
use worker::Worker;

/// What a forced shutdown grants a last call beyond its deadline, and leaves for the accounting.
const FINAL_ACCOUNTING_TIME: Duration = Duration::from_millis(500);

/// Slack added to a thread's longest legitimate call chain before it counts as stuck.
const LIVENESS_MARGIN: Duration = Duration::from_secs(10);

/// The regions, profiles and settings of a run, with every region's allocator channels open;
/// [`Pipeline::run`] starts the threads.
pub struct Pipeline {
    services: Arc<Services>,
    profiles: Vec<Arc<Profile>>,
    regions: BTreeMap<String, Region>,
    fetching: FetcherSettings,
    working: Arc<WorkerSettings>,
    timing: Timing,
    /// Allocator worker threads of each region (ALLOCATOR_THREADS).
    allocator_threads: usize,
}

impl Pipeline {
    /// The pipeline of `config` for `profiles`: every region of the profiles, its channels opened
    /// through `channels`.
    pub fn new(
        config: &Config,
        profiles: Vec<Profile>,
        services: &Arc<Services>,
        channels: &AllocatorChannels,
        working: WorkerSettings,
    ) -> Pipeline {
        let mut regions = BTreeMap::new();
        for profile in &profiles {
            if !regions.contains_key(&profile.region) {
                let region = Region::new(&profile.region, config, services, channels);
                regions.insert(profile.region.clone(), region);
            }
        }
        Pipeline {
            services: Arc::clone(services),
            profiles: profiles.into_iter().map(Arc::new).collect(),
            regions,
            fetching: FetcherSettings::of(&config.timing),
            working: Arc::new(working),
            timing: config.timing,
            allocator_threads: config.allocator_threads,
        }
    }

    /// Every region's allocator channels, by region, for the certificate watcher to replace.
    pub fn allocator_clients(&self) -> BTreeMap<String, Arc<Versioned<AllocatorClients>>> {
        self.regions
            .iter()
            .map(|(name, region)| (name.clone(), Arc::clone(&region.clients)))
            .collect()
    }

    /// Runs until shutdown is requested and the work is drained (or the shutdown deadline forces
    /// an end); returns what happened to every match.
    pub fn run(self) -> std::io::Result<Totals> {
        let services = Arc::clone(&self.services);
        let assign_timeout = self.timing.assign_timeout;
        let release = self.fetching.release;
        // Besides the workers, only this thread holds the queues' receivers: to release what is
        // queued the moment shutdown is forced, while the workers may still be in slow calls.
        let queues: Vec<Receiver<MatchJob>> =
            self.regions.values().map(|r| r.queue.1.clone()).collect();
        let (alive_tx, alive_rx) = crossbeam_channel::bounded::<()>(0);
        let threads = self.spawn_threads(&alive_tx)?;
        drop(alive_tx);

        let shutdown = &services.shutdown;
        shutdown.wait_requested();
        services.health.stopping();
        let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
        let forced = alive_rx.recv_deadline(deadline) == Err(RecvTimeoutError::Timeout);
        // Forced: every call still running ends within one ASSIGN_TIMEOUT (releases are not
        // retried); past that, whatever Open Match or the allocator does, the Director stops
        // waiting.
        let last_call_ends = Instant::now() + assign_timeout + FINAL_ACCOUNTING_TIME;
        if forced {
            log::warn!("Shutdown timeout reached: cancelling fetches and releasing queued matches");
            shutdown.force();
            let (_, openmatch) = services.openmatch.current();
            release_queued(&services, &openmatch, release, Vec::new(), &queues);
        }
        drop(queues);
        if alive_rx.recv_deadline(last_call_ends) == Err(RecvTimeoutError::Timeout) {
            return Ok(Totals::unfinished_abandoned(&services.metrics));
        }
        for thread in threads {
            if thread.join().is_err() {
                log::error!("A pipeline thread ended with a panic");
            }
        }
        Ok(Totals::of(&services.metrics))
    }

    /// Every region's workers, then one fetcher per profile (so that no match is fetched before
    /// its region's workers exist: a worker that cannot start stops the start before any fetch);
    /// each holds `alive` until it ends. Consumes the pipeline: afterwards only the fetchers hold
    /// a region's queue sender and only its workers a receiver, so the workers end once the
    /// fetchers have and the queue is empty.
    fn spawn_threads(self, alive: &Sender<()>) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::new();
        let health = &self.services.health;
        // A match is assigned or released by its MATCH_DEADLINE, then a last release may take an
        // ASSIGN_TIMEOUT: a worker busy longer than that is stuck.
        let worker_limit =
            self.timing.match_deadline + self.timing.assign_timeout + LIVENESS_MARGIN;
        for (name, region) in &self.regions {
            for index in 0..self.allocator_threads {
                let thread = format!("alloc-{name}-{index}");
                let worker = Worker::new(
                    index,
                    region,
                    Arc::clone(&self.services),
                    Arc::clone(&self.working),
                    health.register(&thread, worker_limit),
                );
                let queue = region.queue.1.clone();
                threads.push(spawn(thread, alive.clone(), move || worker.run(queue))?);
            }
        }
        for profile in &self.profiles {
            let name = format!("fetch-{}", profile.name);
            let region = &self.regions[&profile.region];
            let fetcher = Fetcher {
                heartbeat: health.register(&name, self.timing.fetch_timeout + LIVENESS_MARGIN),
                queue: region.queue.0.clone(),
                circuit: Arc::clone(&region.circuit),
                rate_limit: region.rate_limit.clone(),
                profile: Arc::clone(profile),
                services: Arc::clone(&self.services),
                settings: self.fetching,
            };
            threads.push(spawn(name, alive.clone(), move || fetcher.run())?);
        }
        Ok(threads)
    }
}

/// Spawns a named thread that holds `alive` until it ends; an error names the thread.
fn spawn(
    name: String,
    alive: Sender<()>,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let what = format!("thread {name}");
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _alive = alive;
            body();
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what}: {e}")))
}
