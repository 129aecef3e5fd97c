//! The pipeline: one fetcher thread per profile → bounded queue → a fixed pool of allocator workers.
//!
//! Every match taken off a FetchMatches stream ends in exactly one of three outcomes, counted in
//! [`Metrics::matches_finished`]: *assigned*, *released* (tickets back in the pool at once), or
//! *abandoned* (Open Match could not be reached to release them; they return after its
//! pending-release timeout).

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use grpcio::{Channel, EnvBuilder, Environment, RpcStatusCode};

use crate::allocator::{self, AllocatorClient, GameServer};
use crate::config::{AgonesConfig, Config};
use crate::health::{Health, Heartbeat};
use crate::http::{self, Response};
use crate::metrics::Metrics;
use crate::openmatch::{self, FetchOutcome, OpenMatchClient};
use crate::profiles::Profile;
use crate::proto::backend::AssignmentFailure_Cause;
use crate::proto::messages::Match;
use crate::retry::{fetch_backoff, retry, RetryPolicy};
use crate::rotation::{self, Versioned, Watched};
use crate::rpc::{code_name, RpcError};
use crate::shutdown::Shutdown;
use crate::summary;
use crate::tls::TlsMaterial;

/// What a forced shutdown grants a last call beyond its deadline, and leaves for the accounting.
const FINAL_ACCOUNTING_TIME: Duration = Duration::from_millis(500);

/// Slack added to a thread's longest legitimate call chain before it counts as stuck.
const LIVENESS_MARGIN: Duration = Duration::from_secs(10);

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

impl Outcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Released => "released",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// What happened to the matches of this run.
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
    /// Game servers allocated but left without players.
    pub orphaned_game_servers: u64,
}

impl Totals {
    /// The totals when the shutdown bound is reached with calls still running: the matches they
    /// hold are counted as abandoned (Open Match returns their tickets after its pending-release
    /// timeout), so that the accounting adds up.
    pub fn unfinished_abandoned(metrics: &Metrics) -> Totals {
        let mut totals = Totals::of(metrics);
        let finished = totals.assigned + totals.released + totals.abandoned;
        let unfinished = totals.received.saturating_sub(finished);
        log::error!(
            "Shutdown bound reached with {unfinished} matches still in Open Match or allocator calls that did not end in time; counted as abandoned (their tickets return after Open Match's pending-release timeout; their ids are in the log lines above)"
        );
        totals.abandoned += unfinished;
        totals
    }

    /// The totals the metrics hold now.
    pub fn of(metrics: &Metrics) -> Totals {
        let finished = |outcome: Outcome| metrics.matches_finished.get(&[outcome.label()]);
        Totals {
            received: metrics.matches_fetched.sum(),
            assigned: finished(Outcome::Assigned),
            released: finished(Outcome::Released),
            abandoned: finished(Outcome::Abandoned),
            skipped_empty: metrics.empty_matches.get(),
            tickets_not_found: metrics.assignment_failures.get(&["ticket_not_found"]),
            orphaned_game_servers: metrics.orphaned_game_servers.get(),
        }
    }
}

/// What every pipeline thread shares.
struct Shared {
    env: Arc<Environment>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    openmatch: Arc<Versioned<OpenMatchClient>>,
    agones: AgonesConfig,
    allocate: RetryPolicy,
    assign: RetryPolicy,
    /// Longest a match may wait for a worker before it is released instead (QUEUE_TIMEOUT).
    queue_timeout: Duration,
    /// Channels to each region's allocator (ALLOCATOR_CONNECTIONS).
    allocator_connections: usize,
}

/// Runs the Director until shutdown is requested and the work is drained (or the shutdown
/// deadline forces an end); returns what happened to every match.
pub fn run(
    config: &Config,
    profiles: Vec<Profile>,
    shutdown: &Arc<Shutdown>,
) -> std::io::Result<Totals> {
    let shared = Arc::new(shared_state(config, shutdown));
    let regions = regions(config, &shared, &profiles);
    start_certificate_watch(config, &shared, &regions)?;
    summary::start(
        config.timing.interval,
        Arc::clone(&shared.metrics),
        Arc::clone(shutdown),
    )?;
    if let Some(address) = config.metrics_addr {
        let bound = http::serve(address, operations_handler(&shared))
            .map_err(|e| std::io::Error::new(e.kind(), format!("METRICS_ADDR {address}: {e}")))?;
        log::info!("Serving /metrics, /healthz and /readyz on http://{bound}");
    }
    let timing = &config.timing;
    let (alive_tx, alive_rx) = crossbeam_channel::bounded::<()>(0);
    let mut threads = Vec::new();
    for profile in profiles {
        let name = format!("fetch-{}", profile.name);
        let fetcher = Fetcher {
            heartbeat: shared
                .health
                .register(&name, timing.fetch_timeout + LIVENESS_MARGIN),
            queue: regions[&profile.region].queue.0.clone(),
            profile: Arc::new(profile),
            shared: Arc::clone(&shared),
            interval: timing.interval,
            fetch_timeout: timing.fetch_timeout,
        };
        threads.push(spawn(name, alive_tx.clone(), move || fetcher.run())?);
    }
    let worker_limit = timing.allocate_retry_budget
        + timing.allocate_timeout
        + 2 * (timing.assign_retry_budget + timing.assign_timeout)
        + LIVENESS_MARGIN;
    for (name, region) in regions {
        for index in 0..config.allocator_threads {
            let thread = format!("alloc-{name}-{index}");
            let worker = Worker::new(
                index,
                Arc::clone(&region.clients),
                Arc::clone(&shared),
                shared.health.register(&thread, worker_limit),
            );
            let queue = region.queue.1.clone();
            threads.push(spawn(thread, alive_tx.clone(), move || worker.run(queue))?);
        }
    }
    drop(alive_tx);

    shutdown.wait_requested();
    shared.health.stopping();
    let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
    if alive_rx.recv_deadline(deadline) == Err(RecvTimeoutError::Timeout) {
        log::warn!("Shutdown timeout reached: cancelling fetches and releasing queued matches");
        shutdown.force();
    }
    // Forced: every call still running ends within one ASSIGN_TIMEOUT (releases are not retried);
    // past that, whatever Open Match or the allocator does, the Director stops waiting.
    let last_call_ends = Instant::now() + timing.assign_timeout + FINAL_ACCOUNTING_TIME;
    if alive_rx.recv_deadline(last_call_ends) == Err(RecvTimeoutError::Timeout) {
        return Ok(Totals::unfinished_abandoned(&shared.metrics));
    }
    for thread in threads {
        if thread.join().is_err() {
            log::error!("A pipeline thread ended with a panic");
        }
    }
    Ok(Totals::of(&shared.metrics))
}

/// One region's side of the pipeline: the queue its profiles' fetchers fill and its own workers
/// drain, and the allocator channels those workers share. A region whose allocator hangs holds
/// only its own workers, and backpressure stops only its own fetchers.
struct Region {
    queue: (Sender<MatchJob>, Receiver<MatchJob>),
    clients: Arc<Versioned<AllocatorClients>>,
}

/// Every region of the profiles, by name.
fn regions(config: &Config, shared: &Shared, profiles: &[Profile]) -> BTreeMap<String, Region> {
    let mut regions = BTreeMap::new();
    for profile in profiles {
        regions.entry(profile.region.clone()).or_insert_with(|| {
            let clients = allocator_clients(shared, &profile.region, &config.agones.tls);
            Region {
                queue: crossbeam_channel::bounded(config.queue_capacity),
                clients: Arc::new(Versioned::new(clients)),
            }
        });
    }
    regions
}

/// The long-lived channels to `region`'s allocator (ALLOCATOR_CONNECTIONS of them, each its own
/// TLS connection carrying many concurrent calls), registered for readiness.
fn allocator_clients(shared: &Shared, region: &str, material: &TlsMaterial) -> AllocatorClients {
    let channels: Vec<Channel> = (0..shared.allocator_connections)
        .map(|_| allocator::connect(Arc::clone(&shared.env), &shared.agones, material))
        .collect();
    shared.health.allocator_channels(region, channels.clone());
    channels.into_iter().map(AllocatorClient::new).collect()
}

fn shared_state(config: &Config, shutdown: &Arc<Shutdown>) -> Shared {
    let env = Arc::new(EnvBuilder::new().name_prefix("grpc").cq_count(2).build());
    let openmatch = OpenMatchClient::new(
        openmatch::connect(
            Arc::clone(&env),
            &config.openmatch.backend,
            config.openmatch.tls.as_ref(),
        ),
        &config.openmatch.match_function,
    );
    let timing = &config.timing;
    Shared {
        env,
        shutdown: Arc::clone(shutdown),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::new()),
        openmatch: Arc::new(Versioned::new(openmatch)),
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
        queue_timeout: timing.queue_timeout,
        allocator_connections: config.allocator_connections,
    }
}

/// Records certificate expiry and starts the watcher that reloads changed certificates: new
/// Agones material gets every region new allocator channels, which workers take up from their
/// next match.
fn start_certificate_watch(
    config: &Config,
    shared: &Arc<Shared>,
    regions: &BTreeMap<String, Region>,
) -> std::io::Result<()> {
    rotation::record_expiry(&config.agones.tls, &shared.metrics);
    let renew: Vec<(String, Arc<Versioned<AllocatorClients>>)> = regions
        .iter()
        .map(|(name, region)| (name.clone(), Arc::clone(&region.clients)))
        .collect();
    let agones_shared = Arc::clone(shared);
    let mut watched = vec![Watched::new(
        "agones",
        &config.agones.tls,
        move |material| {
            for (region, clients) in &renew {
                clients.replace(allocator_clients(&agones_shared, region, &material));
            }
            log::info!("New allocator channels with the new Agones client certificate");
        },
    )];
    if let Some(material) = &config.openmatch.tls {
        rotation::record_expiry(material, &shared.metrics);
        let (env, clients) = (Arc::clone(&shared.env), Arc::clone(&shared.openmatch));
        let (backend, function) = (
            config.openmatch.backend.clone(),
            config.openmatch.match_function.clone(),
        );
        watched.push(Watched::new("openmatch", material, move |material| {
            let channel = openmatch::connect(Arc::clone(&env), &backend, Some(&material));
            clients.replace(OpenMatchClient::new(channel, &function));
        }));
    }
    rotation::watch(
        watched,
        config.cert_reload_interval,
        Arc::clone(&shared.metrics),
        Arc::clone(&shared.shutdown),
    )
}

/// Serves `/metrics`, `/healthz` and `/readyz`.
fn operations_handler(shared: &Arc<Shared>) -> Arc<http::Handler> {
    let shared = Arc::clone(shared);
    let probe = |result: Result<String, String>| match result {
        Ok(body) => Response::text(200, body),
        Err(body) => Response::text(503, body),
    };
    Arc::new(move |path: &str| match path {
        "/metrics" => Response::metrics(shared.metrics.render()),
        "/healthz" => probe(shared.health.liveness()),
        "/readyz" => probe(shared.health.readiness()),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n".into()),
    })
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
    queue: Sender<MatchJob>,
    shared: Arc<Shared>,
    heartbeat: Arc<Heartbeat>,
    interval: Duration,
    fetch_timeout: Duration,
}

/// How often a fetcher looks again for room in a full queue before its next FetchMatches.
const ROOM_POLL: Duration = Duration::from_millis(10);

impl Fetcher {
    fn run(self) {
        let mut failures = 0;
        while self.wait_for_room() {
            let (_, openmatch) = self.shared.openmatch.current();
            self.heartbeat.progress();
            let mut backlog = VecDeque::new();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                openmatch.fetch_matches(
                    &self.profile.match_profile,
                    self.fetch_timeout,
                    &self.shared.shutdown,
                    |m| self.take(m, &mut backlog),
                )
            }))
            .unwrap_or_else(|_| FetchOutcome {
                received: 0,
                error: Some(RpcError::new(
                    RpcStatusCode::INTERNAL,
                    "bug: the fetcher panicked; matches already received are still handled",
                )),
            });
            self.drain(backlog, &openmatch);
            self.record(&outcome);
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
            let stop = self.heartbeat.waiting(|| {
                select! {
                    recv(self.shared.shutdown.requested_channel()) -> _ => true,
                    default(pause) => false,
                }
            });
            if stop {
                break;
            }
        }
        self.heartbeat.exited();
    }

    /// Backpressure, applied before a FetchMatches call rather than during one: every match a
    /// stream carries is already pending in Open Match, so no stream starts while the queue is
    /// full. Returns `false` once shutdown is requested.
    fn wait_for_room(&self) -> bool {
        self.heartbeat.waiting(|| loop {
            if self.shared.shutdown.is_requested() {
                return false;
            }
            if !self.queue.is_full() {
                return true;
            }
            select! {
                recv(self.shared.shutdown.requested_channel()) -> _ => return false,
                default(ROOM_POLL) => {}
            }
        })
    }

    fn record(&self, outcome: &FetchOutcome) {
        let name = self.profile.name.as_str();
        let result = match &outcome.error {
            None => Ok(()),
            Some(error) => {
                let code = code_name(error.code);
                self.shared.metrics.fetch_errors.inc(&[name, &code]);
                Err(error.to_string())
            }
        };
        self.shared.health.fetch_finished(name, result);
    }

    /// Takes a match as it comes off the stream: into the queue if it has room, else into the
    /// stream's backlog. Never blocks, so the stream is always read to its end at once.
    fn take(&self, m: Match, backlog: &mut VecDeque<MatchJob>) {
        let ticket_ids = distinct_ticket_ids(&m);
        if ticket_ids.is_empty() {
            log::warn!(
                "Skipping match {} of profile {}: it has no tickets",
                m.get_match_id(),
                self.profile.name
            );
            self.shared.metrics.empty_matches.add(1);
            return;
        }
        self.heartbeat.progress();
        self.shared
            .metrics
            .matches_fetched
            .inc(&[self.profile.name.as_str()]);
        backlog.push_back(MatchJob {
            profile: Arc::clone(&self.profile),
            match_id: m.get_match_id().to_string(),
            ticket_ids,
            received_at: Instant::now(),
        });
        while let Some(job) = backlog.pop_front() {
            match self.queue.try_send(job) {
                Ok(()) => self.shared.metrics.queued(),
                Err(refused) => {
                    backlog.push_front(refused.into_inner());
                    break;
                }
            }
        }
    }

    /// Queues the backlog a stream left as room appears. Matches that cannot be queued before
    /// their QUEUE_TIMEOUT passes or shutdown is forced, or that no worker is left to take, are
    /// released together: the expired ones as soon as the queue takes a match again, or when
    /// the backlog is through (matches of one stream expire within moments of each other).
    fn drain(&self, backlog: VecDeque<MatchJob>, openmatch: &OpenMatchClient) {
        let mut expired = Vec::new();
        let mut orphaned = Vec::new();
        for job in backlog {
            let wait = (job.received_at + self.shared.queue_timeout)
                .saturating_duration_since(Instant::now());
            if wait.is_zero() || self.shared.shutdown.is_forced() {
                expired.push(job);
                continue;
            }
            let queued = self.heartbeat.waiting(|| {
                select! {
                    send(self.queue, job) -> sent => match sent {
                        Ok(()) => true,
                        Err(lost) => {
                            orphaned.push(lost.into_inner());
                            false
                        }
                    },
                    recv(self.shared.shutdown.forced_channel()) -> _ => {
                        expired.push(job);
                        false
                    }
                    default(wait) => {
                        expired.push(job);
                        false
                    }
                }
            });
            if queued {
                self.shared.metrics.queued();
                self.release_expired(&mut expired, openmatch);
            }
        }
        self.release_expired(&mut expired, openmatch);
        if !orphaned.is_empty() {
            release_and_count(
                &self.shared,
                openmatch,
                &orphaned,
                "no allocator worker is left to take them",
            );
        }
    }

    /// Releases the matches in `expired` (if any) in one call and counts them.
    fn release_expired(&self, expired: &mut Vec<MatchJob>, openmatch: &OpenMatchClient) {
        if expired.is_empty() {
            return;
        }
        let why = if self.shared.shutdown.is_forced() {
            "shutting down".to_string()
        } else {
            format!(
                "they waited longer than QUEUE_TIMEOUT ({:?}) for an allocator worker",
                self.shared.queue_timeout
            )
        };
        release_and_count(&self.shared, openmatch, expired, &why);
        expired.clear();
    }
}

/// [`release_matches`] within the usual budget, each match counted under the outcome.
fn release_and_count(shared: &Shared, openmatch: &OpenMatchClient, jobs: &[MatchJob], why: &str) {
    let outcome = release_matches(shared, openmatch, jobs, shared.assign.budget, why);
    shared
        .metrics
        .matches_finished
        .add(&[outcome.label()], jobs.len() as u64);
}

/// Returns the tickets of `jobs` to the pool in one ReleaseTickets call, retrying transient
/// failures within `budget`. The outcome is each match's: released, or abandoned to Open Match's
/// pending-release timeout when Open Match cannot be reached. Logs the match ids and `why`.
fn release_matches(
    shared: &Shared,
    openmatch: &OpenMatchClient,
    jobs: &[MatchJob],
    budget: Duration,
    why: &str,
) -> Outcome {
    let ticket_ids: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.ticket_ids.iter().cloned())
        .collect();
    let match_ids: Vec<&str> = jobs.iter().map(|j| j.match_id.as_str()).collect();
    let policy = RetryPolicy {
        budget,
        ..shared.assign
    };
    match retry(
        policy,
        &shared.shutdown,
        |timeout| openmatch.release(&ticket_ids, timeout),
        |_, _| {},
    ) {
        Ok(()) => {
            shared.metrics.tickets_released.add(ticket_ids.len() as u64);
            log::warn!(
                "Released {} tickets of match(es) {match_ids:?} back to the pool: {why}",
                ticket_ids.len()
            );
            Outcome::Released
        }
        Err(error) => {
            log::error!(
                "ReleaseTickets for match(es) {match_ids:?} ({why}) failed: {error}; tickets {ticket_ids:?} wait for Open Match's pending-release timeout",
            );
            Outcome::Abandoned
        }
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

/// The clients of one region's allocator channels, shared by its workers.
type AllocatorClients = Vec<AllocatorClient>;

/// One allocator worker of a region: it takes the region's matches one at a time, on one of the
/// region's shared allocator channels (the current ones, after a certificate change), with the
/// shared Open Match client.
struct Worker {
    index: usize,
    clients: Arc<Versioned<AllocatorClients>>,
    shared: Arc<Shared>,
    heartbeat: Arc<Heartbeat>,
    openmatch_generation: u64,
    openmatch: Arc<OpenMatchClient>,
}

impl Worker {
    fn new(
        index: usize,
        clients: Arc<Versioned<AllocatorClients>>,
        shared: Arc<Shared>,
        heartbeat: Arc<Heartbeat>,
    ) -> Worker {
        let (openmatch_generation, openmatch) = shared.openmatch.current();
        Worker {
            index,
            clients,
            shared,
            heartbeat,
            openmatch_generation,
            openmatch,
        }
    }

    fn run(mut self, queue: Receiver<MatchJob>) {
        while let Ok(job) = self.heartbeat.waiting(|| queue.recv()) {
            self.shared.metrics.dequeued();
            self.refresh_clients();
            if self.shared.shutdown.is_forced() {
                self.release_queued(job, &queue);
                continue;
            }
            let outcome =
                catch_unwind(AssertUnwindSafe(|| self.handle(&job))).unwrap_or_else(|_| {
                    log::error!(
                        "Bug: a worker panicked while handling match {}; releasing its tickets",
                        job.match_id
                    );
                    self.release(&job, self.shared.assign.budget, "the worker panicked")
                });
            self.shared.metrics.matches_finished.inc(&[outcome.label()]);
            self.heartbeat.progress();
        }
        self.heartbeat.exited();
    }

    /// After the shutdown deadline: `job` and every match still queued go back to the pool in
    /// one ReleaseTickets call.
    fn release_queued(&self, job: MatchJob, queue: &Receiver<MatchJob>) {
        let mut jobs = vec![job];
        for queued in queue.try_iter() {
            self.shared.metrics.dequeued();
            jobs.push(queued);
        }
        release_and_count(&self.shared, &self.openmatch, &jobs, "shutting down");
    }

    /// Between two matches: switches to a new Open Match client if there is one.
    fn refresh_clients(&mut self) {
        if self.shared.openmatch.generation() != self.openmatch_generation {
            (self.openmatch_generation, self.openmatch) = self.shared.openmatch.current();
        }
    }

    fn handle(&self, job: &MatchJob) -> Outcome {
        let budget = self.shared.assign.budget;
        if job.received_at.elapsed() > self.shared.queue_timeout {
            let why = format!(
                "it waited longer than QUEUE_TIMEOUT ({:?}) for an allocator worker",
                self.shared.queue_timeout
            );
            return self.release(job, budget, &why);
        }
        match self.allocate(job) {
            Some(server) => self.assign(job, &server),
            None => self.release(job, budget, "no usable game server was allocated"),
        }
    }

    /// One Allocate attempt, measured.
    fn allocate_once(
        &self,
        job: &MatchJob,
        request: &crate::proto::allocation::AllocationRequest,
        timeout: Duration,
    ) -> Result<crate::proto::allocation::AllocationResponse, RpcError> {
        let started = Instant::now();
        let (_, clients) = self.clients.current();
        let client = &clients[self.index % clients.len()];
        let result = client.allocate(request, timeout, &self.shared.shutdown);
        let metrics = &self.shared.metrics;
        metrics.allocation_duration.observe(started.elapsed());
        let label = match &result {
            Ok(_) => "ok".to_string(),
            Err(error) => code_name(error.code),
        };
        metrics
            .allocations
            .inc(&[job.profile.region.as_str(), &label]);
        result
    }

    /// Allocates a game server in the match's region, or says why not (and returns `None`).
    fn allocate(&self, job: &MatchJob) -> Option<GameServer> {
        let request = allocator::allocation_request(
            &self.shared.agones,
            &job.profile.region,
            &job.profile.name,
            &job.match_id,
        );
        let response = retry(
            self.shared.allocate,
            &self.shared.shutdown,
            |timeout| self.allocate_once(job, &request, timeout),
            |error, pause| {
                log::debug!(
                    "Allocate for match {} (region {}) failed: {error}; retrying in {}ms",
                    job.match_id,
                    job.profile.region,
                    pause.as_millis()
                )
            },
        );
        let response = match response {
            Ok(response) => response,
            Err(error)
                if error.code == RpcStatusCode::CANCELLED && self.shared.shutdown.is_forced() =>
            {
                self.shared.metrics.orphaned_game_servers.add(1);
                log::error!(
                    "Allocate for match {} (region {}) was cancelled by the shutdown; a game server may have been allocated for it anyway and is counted as orphaned: look for the annotation {}={}",
                    job.match_id,
                    job.profile.region,
                    allocator::MATCH_ID_ANNOTATION,
                    job.match_id
                );
                return None;
            }
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
        match allocator::game_server(&response, &self.shared.agones.port_name) {
            Ok(server) => Some(server),
            Err(unusable) => {
                self.shared.metrics.orphaned_game_servers.add(1);
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
            self.shared.assign,
            &self.shared.shutdown,
            |timeout| {
                self.openmatch
                    .assign(&job.ticket_ids, &server.connection, timeout)
            },
            |error, pause| {
                log::debug!(
                    "AssignTickets for match {} failed: {error}; retrying in {}ms",
                    job.match_id,
                    pause.as_millis()
                )
            },
        );
        match result {
            Ok(failures) => {
                let metrics = &self.shared.metrics;
                for failure in &failures {
                    let cause = match failure.get_cause() {
                        AssignmentFailure_Cause::TICKET_NOT_FOUND => "ticket_not_found",
                        AssignmentFailure_Cause::UNKNOWN => "unknown",
                    };
                    metrics.assignment_failures.inc(&[cause]);
                    log::warn!(
                        "AssignTickets: ticket {} of match {} was not assigned: {:?}",
                        failure.get_ticket_id(),
                        job.match_id,
                        failure.get_cause()
                    );
                }
                let assigned = job.ticket_ids.len() - failures.len().min(job.ticket_ids.len());
                metrics.tickets_assigned.add(assigned as u64);
                metrics
                    .match_to_assignment
                    .observe(job.received_at.elapsed());
                log::info!(
                    "Assigned server {} (gameserver {}) to match {} ({assigned} tickets)",
                    server.connection,
                    server.name,
                    job.match_id,
                );
                Outcome::Assigned
            }
            Err(error) => {
                self.shared.metrics.orphaned_game_servers.add(1);
                self.shared.metrics.assignment_failures.inc(&["rpc_error"]);
                log::error!(
                    "AssignTickets for match {} failed: {error}; game server {} ({}) is orphaned: allocated, no players will come; tickets {:?}",
                    job.match_id,
                    server.name,
                    server.connection,
                    job.ticket_ids
                );
                self.release(job, Duration::ZERO, "AssignTickets failed")
            }
        }
    }

    /// Releases the match's tickets, retrying transient failures within `budget`.
    fn release(&self, job: &MatchJob, budget: Duration, why: &str) -> Outcome {
        release_matches(
            &self.shared,
            &self.openmatch,
            std::slice::from_ref(job),
            budget,
            why,
        )
    }
}
