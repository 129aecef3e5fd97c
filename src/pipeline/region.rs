//! One region's side of the pipeline: the queue its profiles' fetchers fill and its own workers
//! drain, the allocator channels those workers share, its rate limit and its circuit breaker. A
//! region whose allocator hangs holds only its own workers, and backpressure stops only its own
//! fetchers.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use grpcio::{Channel, Environment};

use super::job::MatchJob;
use super::services::Services;
use crate::allocator::{self, AllocatorClient};
use crate::circuit::Circuit;
use crate::config::{AllocatorTarget, Config};
use crate::health::Health;
use crate::ratelimit::RateLimit;
use crate::sync::Versioned;
use crate::tls::TlsMaterial;

/// The clients of one region's allocator channels, shared by its workers.
pub type AllocatorClients = Vec<AllocatorClient>;

/// Opens the long-lived channels to a region's allocator: at start, and again with new material
/// after a certificate change.
pub struct AllocatorChannels {
    env: Arc<Environment>,
    targets: BTreeMap<String, AllocatorTarget>,
    /// Channels per region (ALLOCATOR_CONNECTIONS).
    connections: usize,
    health: Arc<Health>,
}

impl AllocatorChannels {
    /// The channels of `config`'s allocators on `env`, registered with `health` for readiness.
    pub fn new(env: Arc<Environment>, config: &Config, health: Arc<Health>) -> AllocatorChannels {
        AllocatorChannels {
            env,
            targets: config.agones.targets.clone(),
            connections: config.allocator_connections,
            health,
        }
    }

    /// ALLOCATOR_CONNECTIONS new channels to `region`'s allocator with `material` (each its own
    /// TLS connection carrying many concurrent calls), registered for readiness.
    pub fn open(&self, region: &str, material: &TlsMaterial) -> AllocatorClients {
        let target = &self.targets[region];
        let channels: Vec<Channel> = (0..self.connections)
            .map(|_| allocator::connect(Arc::clone(&self.env), target, material))
            .collect();
        self.health.allocator_channels(region, channels.clone());
        channels.into_iter().map(AllocatorClient::new).collect()
    }
}

/// One region's queue, allocator channels, rate limit and circuit breaker.
pub(super) struct Region {
    pub(super) queue: (Sender<MatchJob>, Receiver<MatchJob>),
    /// The region's allocator channels, replaced after a certificate change.
    pub(super) clients: Arc<Versioned<AllocatorClients>>,
    /// ALLOCATE_RATE_LIMIT, shared by the region's workers.
    pub(super) rate_limit: Option<Arc<RateLimit>>,
    /// The region's circuit breaker, shared by its fetchers and workers.
    pub(super) circuit: Arc<Circuit>,
}

impl Region {
    /// Region `name` of `config`, its channels open and its circuit reported closed.
    pub(super) fn new(
        name: &str,
        config: &Config,
        services: &Services,
        channels: &AllocatorChannels,
    ) -> Region {
        let clients = channels.open(name, &config.agones.target(name).tls);
        let circuit = Arc::new(Circuit::new(config.timing.match_deadline));
        services
            .health
            .allocator_circuit(name, Arc::clone(&circuit));
        Region {
            queue: crossbeam_channel::bounded(config.queue_capacity),
            clients: Arc::new(Versioned::new(clients)),
            rate_limit: config
                .allocate_rate_limit
                .map(|rate| Arc::new(RateLimit::new(rate))),
            circuit,
        }
    }
}
