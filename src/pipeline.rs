//! The pipeline: one fetcher thread per profile → bounded queue → a fixed pool of allocator workers.
//!
//! Every match taken off a FetchMatches stream ends in exactly one of three outcomes, counted in
//! [`Tally`]: *assigned*, *released* (tickets back in the pool at once), or *abandoned* (Open Match
//! could not be reached to release them; they return after its pending-release timeout).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use grpcio::{EnvBuilder, RpcStatusCode};

use crate::allocator::{self, AllocatorClient, GameServer};
use crate::config::Config;
use crate::openmatch::{self, FetchOutcome, OpenMatchClient};
use crate::profiles::Profile;
use crate::proto::backend::AssignmentFailure_Cause;
use crate::proto::messages::Match;
use crate::retry::{fetch_backoff, retry, RetryPolicy};
use crate::rpc::RpcError;
use crate::shutdown::Shutdown;

/// A match waiting for a game server, with the profile (and so the region) that produced it.
#[derive(Debug)]
pub struct MatchJob {
    /// The profile whose FetchMatches returned the match.
    pub profile: Arc<Profile>,
    /// Open Match's match id.
    pub match_id: String,
    /// The match's distinct ticket ids.
    pub ticket_ids: Vec<String>,
    /// When the match came off the stream.
    pub received_at: Instant,
}

/// How a match ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its tickets got a game server's connection.
    Assigned,
    /// Its tickets were returned to the pool.
    Released,
    /// Neither assignment nor release reached Open Match.
    Abandoned,
}

/// Counters of what happened to the matches of this run.
#[derive(Debug, Default)]
pub struct Tally {
    received: AtomicU64,
    assigned: AtomicU64,
    released: AtomicU64,
    abandoned: AtomicU64,
    skipped_empty: AtomicU64,
    tickets_not_found: AtomicU64,
    orphaned_game_servers: AtomicU64,
}

/// A copy of [`Tally`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Matches with tickets taken off FetchMatches streams.
    pub received: u64,
    /// Matches whose tickets were assigned.
    pub assigned: u64,
    /// Matches whose tickets were released.
    pub released: u64,
    /// Matches left to Open Match's pending-release timeout.
    pub abandoned: u64,
    /// Matches without tickets, skipped.
    pub skipped_empty: u64,
    /// Tickets AssignTickets reported as not found.
    pub tickets_not_found: u64,
    /// Game servers allocated whose assignment then failed.
    pub orphaned_game_servers: u64,
}

impl Tally {
    fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Assigned => &self.assigned,
            Outcome::Released => &self.released,
            Outcome::Abandoned => &self.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn totals(&self) -> Totals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            received: get(&self.received),
            assigned: get(&self.assigned),
            released: get(&self.released),
            abandoned: get(&self.abandoned),
            skipped_empty: get(&self.skipped_empty),
            tickets_not_found: get(&self.tickets_not_found),
            orphaned_game_servers: get(&self.orphaned_game_servers),
        }
    }
}

/// Runs the Director until shutdown is requested and the work is drained (or the shutdown
/// deadline forces an end); returns what happened to every match.
pub fn run(
    config: &Config,
    profiles: Vec<Profile>,
    shutdown: &Arc<Shutdown>,
) -> std::io::Result<Totals> {
    let env = Arc::new(EnvBuilder::new().name_prefix("grpc").cq_count(2).build());
    let openmatch = OpenMatchClient::new(
        openmatch::connect(Arc::clone(&env), &config.openmatch),
        &config.openmatch.match_function,
    );
    let tally = Arc::new(Tally::default());
    let settings = Arc::new(WorkerSettings::from_config(config));
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(config.queue_capacity);
    let (alive_tx, alive_rx) = crossbeam_channel::bounded::<()>(0);
    let mut threads = Vec::new();
    for profile in profiles {
        let fetcher = Fetcher {
            profile: Arc::new(profile),
            openmatch: openmatch.clone(),
            queue: queue_tx.clone(),
            shutdown: Arc::clone(shutdown),
            tally: Arc::clone(&tally),
            interval: config.timing.interval,
            fetch_timeout: config.timing.fetch_timeout,
        };
        let name = format!("fetch-{}", fetcher.profile.name);
        threads.push(spawn(name, alive_tx.clone(), move || fetcher.run())?);
    }
    for index in 0..config.allocator_threads {
        let worker = Worker {
            allocator: AllocatorClient::new(allocator::connect(Arc::clone(&env), &config.agones)),
            openmatch: openmatch.clone(),
            settings: Arc::clone(&settings),
            shutdown: Arc::clone(shutdown),
            tally: Arc::clone(&tally),
        };
        let queue = queue_rx.clone();
        threads.push(spawn(
            format!("alloc-{index}"),
            alive_tx.clone(),
            move || worker.run(queue),
        )?);
    }
    drop((queue_tx, queue_rx, alive_tx));

    shutdown.wait_requested();
    let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
    if alive_rx.recv_deadline(deadline) == Err(RecvTimeoutError::Timeout) {
        log::warn!("Shutdown timeout reached: cancelling fetches and releasing queued matches");
        shutdown.force();
    }
    for thread in threads {
        if thread.join().is_err() {
            log::error!("A pipeline thread ended with a panic");
        }
    }
    Ok(tally.totals())
}

/// Spawns a named thread that holds `alive` until it ends.
fn spawn(
    name: String,
    alive: Sender<()>,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let _alive = alive;
        body();
    })
}

/// One profile's fetch loop.
struct Fetcher {
    profile: Arc<Profile>,
    openmatch: OpenMatchClient,
    queue: Sender<MatchJob>,
    shutdown: Arc<Shutdown>,
    tally: Arc<Tally>,
    interval: Duration,
    fetch_timeout: Duration,
}

impl Fetcher {
    fn run(self) {
        let mut failures = 0;
        let mut held = Vec::new();
        while !self.shutdown.is_requested() {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.openmatch.fetch_matches(
                    &self.profile.match_profile,
                    self.fetch_timeout,
                    &self.shutdown,
                    |m| self.enqueue(m, &mut held),
                )
            }))
            .unwrap_or_else(|_| FetchOutcome {
                received: 0,
                error: Some(RpcError::new(
                    RpcStatusCode::INTERNAL,
                    "bug: the fetcher panicked; matches already queued are still handled",
                )),
            });
            held.drain(..).for_each(|job| self.send(job));
            let pause = match outcome.error {
                None => {
                    failures = 0;
                    if outcome.received > 0 {
                        log::info!(
                            "Generated {} matches for profile {}",
                            outcome.received,
                            self.profile.name
                        );
                    }
                    self.interval
                }
                Some(error) => {
                    failures += 1;
                    let pause = fetch_backoff(self.interval, failures);
                    log::warn!(
                        "FetchMatches for profile {} failed after {} matches: {error}; next try in {:.1}s",
                        self.profile.name,
                        outcome.received,
                        pause.as_secs_f64()
                    );
                    pause
                }
            };
            select! {
                recv(self.shutdown.requested_channel()) -> _ => break,
                default(pause) => {}
            }
        }
    }

    /// Queues a match as it comes off the stream. A full queue blocks (backpressure) until
    /// shutdown is requested; from then on matches are held here instead, so that the rest of
    /// the stream is read at once and every pending match is known (and later released).
    fn enqueue(&self, m: Match, held: &mut Vec<MatchJob>) {
        let ticket_ids = distinct_ticket_ids(&m);
        if ticket_ids.is_empty() {
            log::warn!(
                "Skipping match {} of profile {}: it has no tickets",
                m.get_match_id(),
                self.profile.name
            );
            self.tally.skipped_empty.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.tally.received.fetch_add(1, Ordering::Relaxed);
        let job = MatchJob {
            profile: Arc::clone(&self.profile),
            match_id: m.get_match_id().to_string(),
            ticket_ids,
            received_at: Instant::now(),
        };
        if !held.is_empty() {
            held.push(job);
            return;
        }
        select! {
            send(self.queue, job) -> sent => {
                if let Err(lost) = sent {
                    self.abandon(lost.0);
                }
            }
            recv(self.shutdown.requested_channel()) -> _ => held.push(job),
        }
    }

    /// Queues a job, waiting for room.
    fn send(&self, job: MatchJob) {
        if let Err(lost) = self.queue.send(job) {
            self.abandon(lost.0);
        }
    }

    fn abandon(&self, job: MatchJob) {
        log::error!(
            "No allocator worker is left to take match {}; its tickets {:?} wait for Open Match's pending-release timeout",
            job.match_id,
            job.ticket_ids
        );
        self.tally.record(Outcome::Abandoned);
    }
}

/// The ticket ids of a match, first occurrence kept (Open Match rejects duplicates).
pub fn distinct_ticket_ids(m: &Match) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(m.get_tickets().len());
    for ticket in m.get_tickets() {
        if !ids.iter().any(|id| id == ticket.get_id()) {
            ids.push(ticket.get_id().to_string());
        }
    }
    ids
}

/// What workers need from the configuration.
struct WorkerSettings {
    agones: crate::config::AgonesConfig,
    allocate: RetryPolicy,
    assign: RetryPolicy,
}

impl WorkerSettings {
    fn from_config(config: &Config) -> WorkerSettings {
        let timing = &config.timing;
        WorkerSettings {
            agones: config.agones.clone(),
            allocate: RetryPolicy {
                attempt_timeout: timing.allocate_timeout,
                budget: timing.allocate_retry_budget,
                retryable: allocator::is_retryable,
            },
            assign: RetryPolicy {
                attempt_timeout: timing.assign_timeout,
                budget: timing.assign_retry_budget,
                retryable: openmatch::is_retryable,
            },
        }
    }
}

/// One allocator worker: its own allocator channel, a shared Open Match client.
struct Worker {
    allocator: AllocatorClient,
    openmatch: OpenMatchClient,
    settings: Arc<WorkerSettings>,
    shutdown: Arc<Shutdown>,
    tally: Arc<Tally>,
}

impl Worker {
    fn run(self, queue: Receiver<MatchJob>) {
        for job in queue.iter() {
            let outcome =
                catch_unwind(AssertUnwindSafe(|| self.handle(&job))).unwrap_or_else(|_| {
                    log::error!(
                        "Bug: a worker panicked while handling match {}; releasing its tickets",
                        job.match_id
                    );
                    self.release(&job, self.settings.assign.budget)
                });
            self.tally.record(outcome);
        }
    }

    fn handle(&self, job: &MatchJob) -> Outcome {
        if self.shutdown.is_forced() {
            log::info!("Releasing match {} (shutting down)", job.match_id);
            return self.release(job, self.settings.assign.budget);
        }
        match self.allocate(job) {
            Some(server) => self.assign(job, &server),
            None => self.release(job, self.settings.assign.budget),
        }
    }

    /// Allocates a game server in the match's region, or says why not (and returns `None`).
    fn allocate(&self, job: &MatchJob) -> Option<GameServer> {
        let request = allocator::allocation_request(
            &self.settings.agones,
            &job.profile.region,
            &job.profile.name,
            &job.match_id,
        );
        let response = retry(
            self.settings.allocate,
            &self.shutdown,
            |timeout| self.allocator.allocate(&request, timeout, &self.shutdown),
            |error, pause| {
                log::warn!(
                    "Allocate for match {} (region {}) failed: {error}; retrying in {}ms",
                    job.match_id,
                    job.profile.region,
                    pause.as_millis()
                )
            },
        );
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                log::warn!(
                    "Allocate for match {} (region {}) failed: {error}; releasing its {} tickets",
                    job.match_id,
                    job.profile.region,
                    job.ticket_ids.len()
                );
                return None;
            }
        };
        match allocator::game_server(&response, &self.settings.agones.port_name) {
            Ok(server) => Some(server),
            Err(unusable) => {
                log::error!(
                    "Game server {} allocated for match {} is unusable ({}); it stays Allocated with no players until someone deletes it; releasing the match's tickets",
                    unusable.name,
                    job.match_id,
                    unusable.reason
                );
                None
            }
        }
    }

    fn assign(&self, job: &MatchJob, server: &GameServer) -> Outcome {
        let result = retry(
            self.settings.assign,
            &self.shutdown,
            |timeout| {
                self.openmatch
                    .assign(&job.ticket_ids, &server.connection, timeout)
            },
            |error, pause| {
                log::warn!(
                    "AssignTickets for match {} failed: {error}; retrying in {}ms",
                    job.match_id,
                    pause.as_millis()
                )
            },
        );
        match result {
            Ok(failures) => {
                for failure in &failures {
                    if failure.get_cause() == AssignmentFailure_Cause::TICKET_NOT_FOUND {
                        self.tally.tickets_not_found.fetch_add(1, Ordering::Relaxed);
                    }
                    log::warn!(
                        "AssignTickets: ticket {} of match {} was not assigned: {:?}",
                        failure.get_ticket_id(),
                        job.match_id,
                        failure.get_cause()
                    );
                }
                log::info!(
                    "Assigned server {} (gameserver {}) to match {} ({} tickets)",
                    server.connection,
                    server.name,
                    job.match_id,
                    job.ticket_ids.len() - failures.len().min(job.ticket_ids.len())
                );
                Outcome::Assigned
            }
            Err(error) => {
                self.tally
                    .orphaned_game_servers
                    .fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "AssignTickets for match {} failed: {error}; game server {} ({}) is orphaned: allocated, no players will come; tickets {:?}",
                    job.match_id,
                    server.name,
                    server.connection,
                    job.ticket_ids
                );
                self.release(job, Duration::ZERO)
            }
        }
    }

    /// Releases the match's tickets, retrying transient failures within `budget`.
    fn release(&self, job: &MatchJob, budget: Duration) -> Outcome {
        let policy = RetryPolicy {
            budget,
            ..self.settings.assign
        };
        match retry(
            policy,
            &self.shutdown,
            |timeout| self.openmatch.release(&job.ticket_ids, timeout),
            |_, _| {},
        ) {
            Ok(()) => {
                log::info!(
                    "Released {} tickets of match {}",
                    job.ticket_ids.len(),
                    job.match_id
                );
                Outcome::Released
            }
            Err(error) => {
                log::error!(
                    "ReleaseTickets for match {} failed: {error}; tickets {:?} wait for Open Match's pending-release timeout",
                    job.match_id,
                    job.ticket_ids
                );
                Outcome::Abandoned
            }
        }
    }
}
