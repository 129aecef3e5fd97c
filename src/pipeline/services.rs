//! What the pipeline's threads are given: the services every thread shares, and the settings of
//! the fetchers and of the workers, each read once from the configuration.

use std::sync::Arc;
use std::time::Duration;

use grpcio::Environment;

use crate::allocator;
use crate::config::{AgonesConfig, Config, Timing};
use crate::election::Leadership;
use crate::health::Health;
use crate::mapping::Mappings;
use crate::metrics::Metrics;
use crate::openmatch::{self, OpenMatchClient};
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::sync::Versioned;

/// The services every pipeline thread uses.
pub struct Services {
    /// Shutdown requested and forced, as latches.
    pub shutdown: Arc<Shutdown>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    /// The Open Match backend client, replaced when its certificates change.
    pub openmatch: Arc<Versioned<OpenMatchClient>>,
    /// Whether this replica may fetch now (always, without LEADER_ELECTION_LEASE).
    pub leadership: Arc<Leadership>,
}

impl Services {
    /// Fresh metrics and health, and a client of the configured Open Match backend on `env`.
    pub fn new(config: &Config, shutdown: &Arc<Shutdown>, env: &Arc<Environment>) -> Services {
        let openmatch = OpenMatchClient::new(
            openmatch::connect(
                Arc::clone(env),
                &config.openmatch.backend,
                config.openmatch.tls.as_ref(),
            ),
            &config.openmatch.match_function,
        );
        Services {
            shutdown: Arc::clone(shutdown),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::new()),
            openmatch: Arc::new(Versioned::new(openmatch)),
            leadership: Arc::new(Leadership::new(
                config.leader_election.as_ref().map(|e| e.renew_deadline),
            )),
        }
    }
}

/// AssignTickets and ReleaseTickets: ASSIGN_TIMEOUT per attempt, ASSIGN_RETRY_BUDGET in all.
fn assign_policy(timing: &Timing) -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: timing.assign_timeout,
        budget: timing.assign_retry_budget,
        retryable: openmatch::is_retryable,
    }
}

/// How a fetcher paces its FetchMatches calls and gives up on matches it cannot queue.
#[derive(Clone, Copy, Debug)]
pub struct FetcherSettings {
    /// Time between two fetches of one profile (INTERVAL).
    pub interval: Duration,
    /// Deadline of one FetchMatches call (FETCH_TIMEOUT).
    pub fetch_timeout: Duration,
    /// Longest a match may wait for a worker before it is released instead (QUEUE_TIMEOUT).
    pub queue_timeout: Duration,
    /// ReleaseTickets of the matches that could not be queued.
    pub release: RetryPolicy,
}

impl FetcherSettings {
    /// The settings of `timing`.
    pub fn of(timing: &Timing) -> FetcherSettings {
        FetcherSettings {
            interval: timing.interval,
            fetch_timeout: timing.fetch_timeout,
            queue_timeout: timing.queue_timeout,
            release: assign_policy(timing),
        }
    }
}

/// How a worker turns a match into a game server and an assignment.
pub struct WorkerSettings {
    /// What to ask each region's allocator for, and which address players get.
    pub agones: AgonesConfig,
    /// Allocate: ALLOCATE_TIMEOUT per attempt, ALLOCATE_RETRY_BUDGET in all.
    pub allocate: RetryPolicy,
    /// AssignTickets and ReleaseTickets.
    pub assign: RetryPolicy,
    /// Longest a match may wait for a worker before it is released instead (QUEUE_TIMEOUT).
    pub queue_timeout: Duration,
    /// Every match is assigned or released within this from its arrival (MATCH_DEADLINE).
    pub match_deadline: Duration,
    /// The Global Accelerator mappings in use (GA_MAPPING_DIR), replaced when the files change.
    pub mappings: Option<Arc<Versioned<Mappings>>>,
}

impl WorkerSettings {
    /// The settings of `config`, translating addresses through `mappings` if there are any.
    pub fn of(config: &Config, mappings: Option<Arc<Versioned<Mappings>>>) -> WorkerSettings {
        let timing = &config.timing;
        WorkerSettings {
            agones: config.agones.clone(),
            allocate: RetryPolicy {
                attempt_timeout: timing.allocate_timeout,
                budget: timing.allocate_retry_budget,
                retryable: allocator::is_retryable,
            },
            assign: assign_policy(timing),
            queue_timeout: timing.queue_timeout,
            match_deadline: timing.match_deadline,
            mappings,
        }
    }
}
