//! The integration tests, one binary: the real `director` binary against the in-process gRPC
//! doubles of Open Match and the Agones allocator (`agones_openmatch_director::doubles`), with
//! mTLS certificates generated at test time.
//!
//! `common` is what the scenario groups share; every other module is a group of scenarios.

mod common;

mod accelerator;
mod architecture;
mod backfill;
mod check;
mod dropin;
mod failures;
mod image;
mod operations;
mod pipeline;
mod promise;
mod regions;
