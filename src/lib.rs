//! A Director for Open Match v1 that gets game servers from the Agones allocator.
//!
//! Data flows one way: [`config`] → [`profiles`] → fetcher threads ([`openmatch`]) → a bounded
//! queue → allocator workers ([`allocator`], then [`openmatch`] again to assign or release), all
//! in [`pipeline`], started with what surrounds it by [`process`] and stopped through
//! [`shutdown`]. ARCHITECTURE.md states the layers and which module may import which.
#![warn(missing_docs)]

pub mod allocator;
pub mod check;
pub mod circuit;
pub mod config;
#[cfg(any(test, feature = "sim"))]
pub mod doubles;
pub mod election;
pub mod flags;
pub mod health;
pub mod http;
pub mod kube;
pub mod mapping;
pub mod metrics;
pub mod names;
pub mod openmatch;
pub mod pipeline;
pub mod process;
pub mod profiles;
pub mod proto;
pub mod ratelimit;
pub mod request_template;
pub mod retry;
pub mod rotation;
pub mod rpc;
pub mod shutdown;
pub mod summary;
pub mod sync;
pub mod tls;
pub mod x509;

/// The user agent sent on every gRPC channel.
pub const USER_AGENT: &str = concat!("agones-openmatch-director/", env!("CARGO_PKG_VERSION"));
