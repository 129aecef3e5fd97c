//! The integration tests, one binary: the real `director` binary against the in-process doubles
//! of Open Match and the Agones allocator (gRPC) and of the Kubernetes API server (HTTPS)
//! (`agones_openmatch_director::doubles`), with certificates generated at test time.
//!
//! `common` is what the scenario groups share; every other module is a group of scenarios.

mod common;

mod accelerator;
mod architecture;
mod backfill;
mod check;
mod documentation;
mod dropin;
mod election;
mod failures;
mod image;
mod operations;
mod pipeline;
mod promise;
mod regions;
