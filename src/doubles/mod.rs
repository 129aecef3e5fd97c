//! In-process doubles of the Open Match backend and the Agones allocator (gRPC) and of the
//! Kubernetes API server (HTTPS), the test certificates they use, and the real `director` binary
//! run against them. Shared by the end-to-end tests and the `sim` binary (`make demo`, `make
//! bench`, `make soak`); compiled only with the `sim` feature (and in unit tests, for the
//! certificates), so nothing of it is in `director`.

pub mod agones;
pub mod apiserver;
pub mod certs;
pub mod director;
pub mod hostile;
pub mod om_state;
pub mod openmatch;
pub mod server;
pub mod tls;
pub mod wait;
pub mod world;
