//! The Director's process: the pipeline and everything around it. It starts the file watcher
//! (certificates and mappings, with the reloads that renew channels), the retry summary, the
//! operations listener and, with LEADER_ELECTION_LEASE, the election; then runs the pipeline until
//! shutdown, and gives the Lease up once the work is drained.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use grpcio::{EnvBuilder, Environment};

use crate::config::Config;
use crate::election;
use crate::http::{self, Response};
use crate::mapping::{MappingWatch, Mappings};
use crate::openmatch::{self, OpenMatchClient};
use crate::pipeline::{
    AllocatorChannels, AllocatorClients, Pipeline, Services, Totals, WorkerSettings,
};
use crate::profiles::Profile;
use crate::rotation::{self, Reloadable, Watched};
use crate::shutdown::Shutdown;
use crate::summary;
use crate::sync::Versioned;

/// Runs the Director until shutdown is requested and the work is drained (or the shutdown
/// deadline forces an end); returns what happened to every match.
pub fn run(
    config: &Config,
    profiles: Vec<Profile>,
    shutdown: &Arc<Shutdown>,
) -> std::io::Result<Totals> {
    let env = Arc::new(EnvBuilder::new().name_prefix("grpc").cq_count(2).build());
    let services = Arc::new(Services::new(config, shutdown, &env));
    let channels = Arc::new(AllocatorChannels::new(
        Arc::clone(&env),
        config,
        Arc::clone(&services.health),
    ));
    let mappings = config.mapping.as_ref().map(|mapping| {
        mapping.loaded.publish(&services.metrics);
        Arc::new(Versioned::shared(Arc::clone(&mapping.loaded)))
    });
    let working = WorkerSettings::of(config, mappings.clone());
    let pipeline = Pipeline::new(config, profiles, &services, &channels, working);
    let mut watched = allocator_reloads(config, &services, &channels, &pipeline);
    watched.extend(openmatch_reload(config, &services, &env));
    watched.extend(mapping_reload(config, mappings));
    rotation::watch(
        watched,
        config.cert_reload_interval,
        Arc::clone(&services.metrics),
        Arc::clone(shutdown),
    )?;
    summary::start(
        config.timing.interval,
        Arc::clone(&services.metrics),
        Arc::clone(shutdown),
    )?;
    if let Some(address) = config.metrics_addr {
        let bound = http::serve(address, operations_handler(&services))
            .map_err(|e| std::io::Error::new(e.kind(), format!("METRICS_ADDR {address}: {e}")))?;
        log::info!("Serving /metrics, /healthz and /readyz on http://{bound}");
    }
    let election = match &config.leader_election {
        Some(settings) => Some(election::start(
            settings,
            Arc::clone(&services.leadership),
            Arc::clone(&services.metrics),
        )?),
        None => None,
    };
    let totals = pipeline.run();
    if let Some(election) = election {
        election.stop();
    }
    totals
}

/// A region's name and its allocator channels, renewed together after a certificate change.
type RegionClients = (String, Arc<Versioned<AllocatorClients>>);

/// One reload per Agones TLS material (the shared AGONES_* files, or a region's AGONES_TLS_DIRS
/// directory), with its expiry recorded: new material gets each region that uses it new
/// allocator channels, which its workers take up from their next match.
fn allocator_reloads(
    config: &Config,
    services: &Services,
    channels: &Arc<AllocatorChannels>,
    pipeline: &Pipeline,
) -> Vec<Box<dyn Reloadable>> {
    let mut by_material: BTreeMap<Option<&Path>, Vec<RegionClients>> = BTreeMap::new();
    for (region, clients) in pipeline.allocator_clients() {
        let tls_dir = config.agones.target(&region).tls_dir.as_deref();
        by_material
            .entry(tls_dir)
            .or_default()
            .push((region, clients));
    }
    let mut watched: Vec<Box<dyn Reloadable>> = Vec::new();
    for (tls_dir, renew) in by_material {
        let first_region = renew[0].0.clone();
        let material = &config.agones.target(&first_region).tls;
        rotation::record_expiry(material, &services.metrics);
        let endpoint = match tls_dir {
            None => "agones".to_string(),
            Some(_) => format!("agones-{first_region}"),
        };
        let channels = Arc::clone(channels);
        let what = endpoint.clone();
        watched.push(Box::new(Watched::new(
            endpoint,
            material,
            move |material| {
                for (region, clients) in &renew {
                    clients.replace(channels.open(region, &material));
                }
                log::info!("New allocator channels with the new client certificate of {what}");
            },
        )));
    }
    watched
}

/// With Open Match TLS: its expiry recorded, and a reload that gives the workers a new client.
fn openmatch_reload(
    config: &Config,
    services: &Services,
    env: &Arc<Environment>,
) -> Option<Box<dyn Reloadable>> {
    let material = config.openmatch.tls.as_ref()?;
    rotation::record_expiry(material, &services.metrics);
    let (env, clients) = (Arc::clone(env), Arc::clone(&services.openmatch));
    let (backend, function) = (
        config.openmatch.backend.clone(),
        config.openmatch.match_function.clone(),
    );
    Some(Box::new(Watched::new(
        "openmatch".to_string(),
        material,
        move |material| {
            let channel = openmatch::connect(Arc::clone(&env), &backend, Some(&material));
            clients.replace(OpenMatchClient::new(channel, &function));
        },
    )))
}

/// With GA_MAPPING_DIR: the watch that replaces `mappings` when the files change. It reads the
/// regions in REGIONS order, as at start: the guidance's `mapping<i>.gz` is the i-th region's.
fn mapping_reload(
    config: &Config,
    mappings: Option<Arc<Versioned<Mappings>>>,
) -> Option<Box<dyn Reloadable>> {
    let (mapping, mappings) = (config.mapping.as_ref()?, mappings?);
    Some(Box::new(MappingWatch::new(
        mapping.dir.clone(),
        config.profiles.regions.clone(),
        mappings,
    )))
}

/// Serves `/metrics`, `/healthz` and `/readyz`.
fn operations_handler(services: &Arc<Services>) -> Arc<http::Handler> {
    let services = Arc::clone(services);
    let probe = |result: Result<String, String>| match result {
        Ok(body) => Response::text(200, body),
        Err(body) => Response::text(503, body),
    };
    Arc::new(move |path: &str| match path {
        "/metrics" => {
            let metrics = &services.metrics;
            for (region, up) in services.health.allocators() {
                metrics.allocator_up.set(&[&region], u64::from(up.is_ok()));
            }
            for (region, open) in services.health.circuits_open() {
                metrics.region_circuit_open.set(&[&region], u64::from(open));
            }
            Response::metrics(services.metrics.render())
        }
        "/healthz" => probe(services.health.liveness()),
        "/readyz" => probe(services.health.readiness(!services.leadership.may_fetch())),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n".into()),
    })
}
