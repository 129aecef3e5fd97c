//! The pipeline: one fetcher thread per profile ([`fetcher`]) → its region's bounded queue → that
//! region's fixed pool of allocator workers ([`worker`]).
//!
//! Every match taken off a FetchMatches stream ends in exactly one of three outcomes, counted in
//! [`Metrics::matches_finished`]: *assigned*, *released* (tickets back in the pool at once), or
//! *abandoned* (Open Match could not be reached to release them; they return after its
//! pending-release timeout).

mod fetcher;
mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use grpcio::{Channel, EnvBuilder, Environment};

use crate::allocator::{self, AllocatorClient};
use crate::circuit::Circuit;
use crate::config::{AgonesConfig, Config};
use crate::health::Health;
use crate::http::{self, Response};
use crate::mapping::{MappingWatch, Mappings};
use crate::metrics::Metrics;
use crate::openmatch::{self, OpenMatchClient};
use crate::profiles::Profile;
use crate::ratelimit::RateLimit;
use crate::retry::{retry, RetryPolicy};
use crate::rotation::{self, Reloadable, Versioned, Watched};
use crate::shutdown::Shutdown;
use crate::summary;
use crate::tls::TlsMaterial;
pub use fetcher::distinct_ticket_ids;
use fetcher::Fetcher;
use worker::{AllocatorClients, Worker};

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

impl MatchJob {
    /// How much longer the match may wait for a worker before QUEUE_TIMEOUT releases it (zero
    /// once it has waited that long).
    fn queue_time_left(&self, queue_timeout: Duration) -> Duration {
        (self.received_at + queue_timeout).saturating_duration_since(Instant::now())
    }
}

/// Why matches that waited past QUEUE_TIMEOUT are released, for the log.
fn waited_past_queue_timeout(queue_timeout: Duration) -> String {
    format!("waited longer than QUEUE_TIMEOUT ({queue_timeout:?}) for an allocator worker")
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

    /// Whether every match received ended in exactly one outcome.
    pub fn adds_up(&self) -> bool {
        self.received == self.assigned + self.released + self.abandoned
    }

    /// The Director's last log line: [`ACCOUNTING_PREFIX`] and every figure.
    pub fn accounting_line(&self) -> String {
        format!(
            "{ACCOUNTING_PREFIX} {} matches received: {} assigned, {} released, {} abandoned to Open Match's pending-release timeout; {} empty matches skipped, {} tickets not found, {} orphaned game servers",
            self.received,
            self.assigned,
            self.released,
            self.abandoned,
            self.skipped_empty,
            self.tickets_not_found,
            self.orphaned_game_servers,
        )
    }

    /// The totals of an [`accounting_line`](Self::accounting_line) found in `line` (a log line
    /// around it is fine); `None` when `line` holds none.
    pub fn from_accounting_line(line: &str) -> Option<Totals> {
        let (_, figures) = line.split_once(ACCOUNTING_PREFIX)?;
        let n: Vec<u64> = figures
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [received, assigned, released, abandoned, skipped_empty, tickets_not_found, orphaned_game_servers] =
            n[..]
        else {
            return None;
        };
        Some(Totals {
            received,
            assigned,
            released,
            abandoned,
            skipped_empty,
            tickets_not_found,
            orphaned_game_servers,
        })
    }
}

/// How the accounting line starts.
pub const ACCOUNTING_PREFIX: &str = "Director stopped:";

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
    /// The Global Accelerator mappings in use (GA_MAPPING_DIR), replaced when the files change.
    mappings: Option<Arc<Versioned<Mappings>>>,
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
            circuit: Arc::clone(&regions[&profile.region].circuit),
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
                region.rate_limit.clone(),
                Arc::clone(&region.circuit),
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
    /// ALLOCATE_RATE_LIMIT, shared by the region's workers.
    rate_limit: Option<Arc<RateLimit>>,
    /// The region's circuit breaker, shared by its workers.
    circuit: Arc<Circuit>,
}

/// Every region of the profiles, by name.
fn regions(config: &Config, shared: &Shared, profiles: &[Profile]) -> BTreeMap<String, Region> {
    let mut regions = BTreeMap::new();
    for profile in profiles {
        regions.entry(profile.region.clone()).or_insert_with(|| {
            let tls = &config.agones.target(&profile.region).tls;
            let clients = allocator_clients(shared, &profile.region, tls);
            shared
                .metrics
                .region_circuit_open
                .set(&[&profile.region], 0);
            let circuit = Arc::new(Circuit::default());
            shared
                .health
                .allocator_circuit(&profile.region, Arc::clone(&circuit));
            Region {
                queue: crossbeam_channel::bounded(config.queue_capacity),
                clients: Arc::new(Versioned::new(clients)),
                rate_limit: config
                    .allocate_rate_limit
                    .map(|rate| Arc::new(RateLimit::new(rate))),
                circuit,
            }
        });
    }
    regions
}

/// The long-lived channels to `region`'s allocator (ALLOCATOR_CONNECTIONS of them, each its own
/// TLS connection carrying many concurrent calls), with `material`, registered for readiness.
fn allocator_clients(shared: &Shared, region: &str, material: &TlsMaterial) -> AllocatorClients {
    let target = shared.agones.target(region);
    let channels: Vec<Channel> = (0..shared.allocator_connections)
        .map(|_| allocator::connect(Arc::clone(&shared.env), target, material))
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
    let metrics = Arc::new(Metrics::new());
    Shared {
        env,
        shutdown: Arc::clone(shutdown),
        metrics: Arc::clone(&metrics),
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
        mappings: config.mapping.as_ref().map(|mapping| {
            mapping.loaded.publish(&metrics);
            Arc::new(Versioned::shared(Arc::clone(&mapping.loaded)))
        }),
    }
}

/// A region's name and its allocator channels, renewed together after a certificate change.
type RegionClients = (String, Arc<Versioned<AllocatorClients>>);

/// Records certificate expiry and starts the watcher that reloads changed certificates: new
/// Agones material gets every region new allocator channels, which workers take up from their
/// next match.
fn start_certificate_watch(
    config: &Config,
    shared: &Arc<Shared>,
    regions: &BTreeMap<String, Region>,
) -> std::io::Result<()> {
    let mut by_material: BTreeMap<Option<&Path>, Vec<RegionClients>> = BTreeMap::new();
    for (name, region) in regions {
        let tls_dir = config.agones.target(name).tls_dir.as_deref();
        by_material
            .entry(tls_dir)
            .or_default()
            .push((name.clone(), Arc::clone(&region.clients)));
    }
    let mut watched: Vec<Box<dyn Reloadable>> = Vec::new();
    for (tls_dir, renew) in by_material {
        let first_region = renew[0].0.clone();
        let material = &config.agones.target(&first_region).tls;
        rotation::record_expiry(material, &shared.metrics);
        let endpoint = match tls_dir {
            None => "agones".to_string(),
            Some(_) => format!("agones-{first_region}"),
        };
        let agones_shared = Arc::clone(shared);
        let what = endpoint.clone();
        watched.push(Box::new(Watched::new(
            endpoint,
            material,
            move |material| {
                for (region, clients) in &renew {
                    clients.replace(allocator_clients(&agones_shared, region, &material));
                }
                log::info!("New allocator channels with the new client certificate of {what}");
            },
        )));
    }
    if let Some(material) = &config.openmatch.tls {
        rotation::record_expiry(material, &shared.metrics);
        let (env, clients) = (Arc::clone(&shared.env), Arc::clone(&shared.openmatch));
        let (backend, function) = (
            config.openmatch.backend.clone(),
            config.openmatch.match_function.clone(),
        );
        watched.push(Box::new(Watched::new(
            "openmatch".to_string(),
            material,
            move |material| {
                let channel = openmatch::connect(Arc::clone(&env), &backend, Some(&material));
                clients.replace(OpenMatchClient::new(channel, &function));
            },
        )));
    }
    if let (Some(config), Some(mappings)) = (&config.mapping, &shared.mappings) {
        let regions = config.loaded.regions.keys().cloned().collect();
        watched.push(Box::new(MappingWatch::new(
            config.dir.clone(),
            regions,
            Arc::clone(mappings),
        )));
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
        "/metrics" => {
            for (region, up) in shared.health.allocators() {
                let up = u64::from(up.is_ok());
                shared.metrics.allocator_up.set(&[&region], up);
            }
            Response::metrics(shared.metrics.render())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounting_line_reads_back_as_the_same_totals() {
        let totals = Totals {
            received: 120,
            assigned: 100,
            released: 15,
            abandoned: 5,
            skipped_empty: 2,
            tickets_not_found: 3,
            orphaned_game_servers: 4,
        };
        let logged = format!(
            "[2026-11-29T05:00:00Z INFO  director] {}",
            totals.accounting_line()
        );
        assert_eq!(Totals::from_accounting_line(&logged), Some(totals));
        assert!(totals.adds_up());
        let lost = Totals {
            abandoned: 4,
            ..totals
        };
        assert!(!lost.adds_up());
    }

    #[test]
    fn a_line_without_every_figure_is_not_an_accounting_line() {
        assert_eq!(Totals::from_accounting_line("Director started"), None);
        assert_eq!(
            Totals::from_accounting_line("Director stopped: 3 matches received: 3 assigned"),
            None
        );
    }
}
