//! Test doubles of Open Match and the Agones allocator, certificates, and a Director runner.
#![allow(dead_code)]

pub mod agones;
pub mod certs;
pub mod director;
pub mod openmatch;
pub mod tls;
pub mod world;
