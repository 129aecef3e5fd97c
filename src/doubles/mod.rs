//! In-process gRPC doubles of the Open Match backend and the Agones allocator, and the test
//! certificates they use. Shared by the end-to-end tests and the `sim` binary (`make demo`,
//! `make bench`); compiled only with the `sim` feature (and in unit tests, for the certificates),
//! so nothing of it is in `director`.

pub mod agones;
pub mod certs;
pub mod hostile;
pub mod openmatch;
pub mod server;
pub mod tls;
