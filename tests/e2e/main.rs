//! The integration tests, one binary: the real `director` binary against the in-process gRPC
//! doubles of Open Match and the Agones allocator (`agones_openmatch_director::doubles`), with
//! mTLS certificates generated at test time.
//!
//! `director` and `world` are the harness; every other module is a group of scenarios.

mod director;
mod world;

mod accelerator;
mod check;
mod dropin;
mod failures;
mod image;
mod operations;
mod pipeline;
mod regions;
