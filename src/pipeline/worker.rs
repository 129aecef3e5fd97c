//! A worker: takes its region's matches off the queue one at a time and allocates a game server
//! for each (retrying within the budget), then assigns its tickets, or releases them.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use grpcio::RpcStatusCode;

use super::job::{release_matches, release_queued, waited_past_queue_timeout, MatchJob, Outcome};
use super::region::{AllocatorClients, Region};
use super::services::{Services, WorkerSettings};
use crate::allocator::{self, ForMatch, GameServer, UnusableGameServer};
use crate::circuit::{Admission, Circuit, Transition};
use crate::health::Heartbeat;
use crate::openmatch::OpenMatchClient;
use crate::proto::allocation::{AllocationRequest, AllocationResponse};
use crate::proto::backend::AssignmentFailure_Cause;
use crate::ratelimit::{RateLimit, Turn};
use crate::retry::{retry, RetryPolicy};
use crate::rpc::{code_name, RpcError};
use crate::sync::Versioned;

/// One allocator worker of a region: it takes the region's matches one at a time, on one of the
/// region's shared allocator channels (the current ones, after a certificate change), with the
/// shared Open Match client.
pub(super) struct Worker {
    index: usize,
    clients: Arc<Versioned<AllocatorClients>>,
    rate_limit: Option<Arc<RateLimit>>,
    circuit: Arc<Circuit>,
    services: Arc<Services>,
    settings: Arc<WorkerSettings>,
    heartbeat: Arc<Heartbeat>,
    /// By when the next ALLOCATE_RATE_LIMIT turn must come: the match's QUEUE_TIMEOUT for its
    /// first Allocate, so that a throttled match starts in time or is released at once; the end
    /// of its allocation (MATCH_DEADLINE) for the others.
    turn_by: Cell<Option<Instant>>,
    openmatch_generation: u64,
    openmatch: Arc<OpenMatchClient>,
}

impl Worker {
    /// Worker number `index` of `region`.
    pub(super) fn new(
        index: usize,
        region: &Region,
        services: Arc<Services>,
        settings: Arc<WorkerSettings>,
        heartbeat: Arc<Heartbeat>,
    ) -> Worker {
        let (openmatch_generation, openmatch) = services.openmatch.current();
        Worker {
            index,
            clients: Arc::clone(&region.clients),
            rate_limit: region.rate_limit.clone(),
            circuit: Arc::clone(&region.circuit),
            services,
            settings,
            heartbeat,
            turn_by: Cell::new(None),
            openmatch_generation,
            openmatch,
        }
    }

    /// Takes the region's matches off `queue` until it is closed and empty.
    pub(super) fn run(mut self, queue: Receiver<MatchJob>) {
        while let Ok(job) = self.heartbeat.waiting(|| queue.recv()) {
            self.take(job, &queue);
        }
        self.heartbeat.exited();
    }

    /// Handles one match taken off the queue. Never inlined into `run`: a worker waits for its
    /// next match in `run`'s small stack frame, so a thread that has not handled a match yet keeps
    /// only a few pages of stack resident (the per-match frames are large).
    #[inline(never)]
    fn take(&mut self, job: MatchJob, queue: &Receiver<MatchJob>) {
        self.services.metrics.dequeued();
        self.refresh_clients();
        if self.services.shutdown.is_forced() {
            let (services, openmatch) = (&self.services, &self.openmatch);
            let queues = std::slice::from_ref(queue);
            release_queued(services, openmatch, self.settings.assign, vec![job], queues);
            return;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| self.handle(&job))).unwrap_or_else(|_| {
            log::error!(
                "Bug: a worker panicked while handling match {}; releasing its tickets",
                job.match_id
            );
            self.release(&job, self.settings.assign.budget, "the worker panicked")
        });
        self.services
            .metrics
            .matches_finished
            .inc(&[outcome.label()]);
        self.heartbeat.progress();
    }

    /// Between two matches: switches to a new Open Match client if there is one.
    fn refresh_clients(&mut self) {
        if self.services.openmatch.generation() != self.openmatch_generation {
            (self.openmatch_generation, self.openmatch) = self.services.openmatch.current();
        }
    }

    fn handle(&self, job: &MatchJob) -> Outcome {
        let budget = self.settings.assign.budget;
        if job.queue_time_left(self.settings.queue_timeout).is_zero() {
            let why = format!(
                "it {}",
                waited_past_queue_timeout(self.settings.queue_timeout)
            );
            return self.release(job, budget, &why);
        }
        if Instant::now() >= self.allocate_by(job) {
            let why = "its MATCH_DEADLINE leaves no time for an Allocate and an AssignTickets";
            return self.release(job, budget, why);
        }
        self.turn_by
            .set(Some(job.received_at + self.settings.queue_timeout));
        match self.allocate(job) {
            Some(server) => self.assign(job, &server),
            None => self.release(job, budget, "no usable game server was allocated"),
        }
    }

    /// When the match must be assigned or released: MATCH_DEADLINE after its arrival.
    fn deadline(&self, job: &MatchJob) -> Instant {
        job.received_at + self.settings.match_deadline
    }

    /// When its allocation must end: one AssignTickets attempt before the deadline.
    fn allocate_by(&self, job: &MatchJob) -> Instant {
        self.deadline(job)
            .checked_sub(self.settings.assign.attempt_timeout)
            .unwrap_or(job.received_at)
    }

    /// One Allocate attempt, measured; not sent while the region's circuit is open.
    fn allocate_once(
        &self,
        job: &MatchJob,
        request: &AllocationRequest,
        timeout: Duration,
    ) -> Result<AllocationResponse, RpcError> {
        let region = job.profile.region.as_str();
        self.wait_for_turn(job)?;
        if self.circuit.admit() == Admission::Refused {
            return Err(RpcError::new(
                RpcStatusCode::FAILED_PRECONDITION,
                "not sent: the region's allocator failed repeatedly and its circuit is open",
            ));
        }
        self.turn_by.set(Some(self.allocate_by(job)));
        let started = Instant::now();
        let (_, clients) = self.clients.current();
        let client = &clients[self.index % clients.len()];
        let result = client.allocate(request, timeout, &self.services.shutdown);
        let metrics = &self.services.metrics;
        metrics.allocation_duration.observe(started.elapsed());
        let label = match &result {
            Ok(_) => "ok".to_string(),
            Err(error) => code_name(error.code),
        };
        metrics.allocations.inc(&[region, &label]);
        let failure = result.as_ref().err().map(|error| error.code);
        match self.circuit.record(started, failure) {
            Some(Transition::Opened(pause)) => {
                log::warn!(
                    "Circuit of region {region} open: its allocator keeps failing (last: {label}); its matches are released at once until a probe succeeds, next probe in {:.1}s",
                    pause.as_secs_f64()
                );
            }
            Some(Transition::Closed) => {
                log::info!("Circuit of region {region} closed: its allocator answers again");
            }
            None => {}
        }
        result
    }

    /// One attempt within `timeout`. After a failure that may have allocated a game server whose
    /// answer was lost (`lost_answer`), it first asks for that server (`recovery`, an Allocated
    /// server labelled with the match); only when the allocator has none does it ask for a new
    /// one (`request`).
    fn attempt(
        &self,
        job: &MatchJob,
        (request, recovery): (&AllocationRequest, &AllocationRequest),
        lost_answer: &Cell<bool>,
        timeout: Duration,
    ) -> Result<AllocationResponse, RpcError> {
        let deadline = Instant::now() + timeout;
        if lost_answer.get() {
            match self.allocate_once(job, recovery, timeout) {
                Ok(response) => {
                    self.recovered(job, &response);
                    return Ok(response);
                }
                Err(error) if error.code == RpcStatusCode::RESOURCE_EXHAUSTED => {
                    lost_answer.set(false)
                }
                Err(error) => return Err(error),
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let result = self.allocate_once(job, request, left);
        if let Err(error) = &result {
            lost_answer.set(allocator::may_have_allocated(error.code));
        }
        result
    }

    /// Counts and logs a game server found again after an attempt that allocated it lost its
    /// answer.
    fn recovered(&self, job: &MatchJob, response: &AllocationResponse) {
        let region = job.profile.region.as_str();
        self.services.metrics.allocations_recovered.inc(&[region]);
        log::info!(
            "Recovered game server {} for match {} (region {region}): an earlier attempt allocated it and its answer was lost",
            response.get_gameServerName(),
            job.match_id
        );
    }

    /// Under ALLOCATE_RATE_LIMIT, waits for this attempt's turn (counted when it had to wait);
    /// an error, without a call, when the turn would come after `turn_by` or shutdown is forced
    /// meanwhile.
    fn wait_for_turn(&self, job: &MatchJob) -> Result<(), RpcError> {
        let Some(limit) = &self.rate_limit else {
            return Ok(());
        };
        match limit.acquire(self.turn_by.get(), &self.services.shutdown) {
            Turn::AtOnce => Ok(()),
            Turn::AfterWaiting => {
                let region = job.profile.region.as_str();
                self.services.metrics.allocate_throttled.inc(&[region]);
                Ok(())
            }
            Turn::Cancelled => Err(RpcError::new(
                RpcStatusCode::UNAVAILABLE,
                "not sent: shutdown forced while waiting for ALLOCATE_RATE_LIMIT",
            )),
            Turn::TooLate => Err(RpcError::new(
                RpcStatusCode::FAILED_PRECONDITION,
                "not sent: no ALLOCATE_RATE_LIMIT turn comes before the match's QUEUE_TIMEOUT",
            )),
        }
    }

    /// Allocates a game server in the match's region, or says why not (and returns `None`).
    fn allocate(&self, job: &MatchJob) -> Option<GameServer> {
        let game = ForMatch {
            region: &job.profile.region,
            profile: &job.profile.name,
            match_id: &job.match_id,
            backfill_id: job.backfill_id.as_deref(),
        };
        let agones = &self.settings.agones;
        let request = allocator::allocation_request(agones, game);
        let recovery = allocator::recovery_request(&request, agones, game.region);
        let lost_answer = Cell::new(false);
        let response = retry(
            self.settings.allocate.until(self.allocate_by(job)),
            &self.services.shutdown,
            |timeout| self.attempt(job, (&request, &recovery), &lost_answer, timeout),
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
            Err(error) if lost_answer.get() => {
                self.services.metrics.orphaned_game_servers.add(1);
                log::error!(
                    "Allocate for match {} (region {}) failed: {error}; an attempt whose answer was lost may have allocated a game server that could not be found again: counted as orphaned, look for the label {}={} (annotation {}={}); releasing its {} tickets",
                    job.match_id,
                    job.profile.region,
                    allocator::MATCH_LABEL,
                    allocator::match_label_value(&job.match_id),
                    allocator::MATCH_ID_ANNOTATION,
                    job.match_id,
                    job.ticket_ids.len()
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
        let agones = &self.settings.agones;
        let unusable = match allocator::game_server(&response, &agones.port_name, &agones.address) {
            Ok(server) => match self.translate(job, server) {
                Ok(server) => return Some(server),
                Err(unusable) => unusable,
            },
            Err(unusable) => unusable,
        };
        self.services.metrics.orphaned_game_servers.add(1);
        log::error!(
            "Game server {} allocated for match {} is unusable ({}); it stays Allocated with no players until someone deletes it; releasing the match's tickets",
            unusable.name,
            job.match_id,
            unusable.reason
        );
        None
    }

    /// With Global Accelerator (GA_MAPPING_DIR), the connection players get is the accelerator's
    /// for the server's address; a server missing from the mapping is unusable (and counted).
    fn translate(
        &self,
        job: &MatchJob,
        mut server: GameServer,
    ) -> Result<GameServer, UnusableGameServer> {
        let Some(mappings) = &self.settings.mappings else {
            return Ok(server);
        };
        let region = job.profile.region.as_str();
        match mappings
            .current()
            .1
            .translate(region, &server.address, server.port)
        {
            Ok(connection) => {
                server.connection = connection;
                Ok(server)
            }
            Err(miss) => {
                self.services
                    .metrics
                    .connection_translation_misses
                    .inc(&[region]);
                Err(UnusableGameServer {
                    name: server.name,
                    reason: format!(
                        "its address {miss} cannot be translated through region {region}'s Global Accelerator mapping"
                    ),
                })
            }
        }
    }

    fn assign(&self, job: &MatchJob, server: &GameServer) -> Outcome {
        let result = retry(
            self.settings.assign.until(self.deadline(job)),
            &self.services.shutdown,
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
                let metrics = &self.services.metrics;
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
                if assigned == 0 {
                    metrics.orphaned_game_servers.add(1);
                    log::error!(
                        "AssignTickets: every ticket of match {} is gone, no player will join its game server {} ({}): orphaned, allocated with no players",
                        job.match_id,
                        server.name,
                        server.connection
                    );
                    return self.release(job, Duration::ZERO, "every ticket was gone");
                }
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
                self.services.metrics.orphaned_game_servers.add(1);
                self.services
                    .metrics
                    .assignment_failures
                    .inc(&["rpc_error"]);
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
    /// Retries stop at the match's deadline; one attempt always runs, with ASSIGN_TIMEOUT.
    fn release(&self, job: &MatchJob, budget: Duration, why: &str) -> Outcome {
        let left = self.deadline(job).saturating_duration_since(Instant::now());
        let policy = RetryPolicy {
            budget: budget.min(left),
            ..self.settings.assign
        };
        release_matches(
            &self.services,
            &self.openmatch,
            policy,
            std::slice::from_ref(job),
            why,
        )
    }
}
