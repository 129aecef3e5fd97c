//! A double's gRPC server: serves on a loopback port, and can stop and serve again on that port
//! (to simulate an outage or a rolled server) with the same state.

use std::sync::Arc;

use grpcio::{Environment, Server, ServerBuilder, ServerCredentials, Service};

/// A service served on 127.0.0.1.
pub struct Served {
    name: &'static str,
    service: Box<dyn Fn() -> Service + Send>,
    server: Option<Server>,
    /// The port it listens on.
    pub port: u16,
}

impl Served {
    /// Serves what `service` makes on `port` (0: any free port) with `credentials`.
    pub fn start(
        name: &'static str,
        service: impl Fn() -> Service + Send + 'static,
        credentials: ServerCredentials,
        port: u16,
    ) -> Served {
        let mut served = Served {
            name,
            service: Box::new(service),
            server: None,
            port,
        };
        served.restart(credentials);
        served
    }

    /// Stops serving; calls fail with UNAVAILABLE until [`Served::restart`].
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = futures_executor::block_on(server.shutdown());
        }
    }

    /// Serves again on the same port (the first time: on the port given, or any free one).
    pub fn restart(&mut self, credentials: ServerCredentials) {
        self.stop();
        let mut server = ServerBuilder::new(Arc::new(Environment::new(1)))
            .register_service((self.service)())
            .build()
            .unwrap_or_else(|e| panic!("build the {} double: {e}", self.name));
        let port = server
            .add_listening_port(format!("127.0.0.1:{}", self.port), credentials)
            .unwrap_or_else(|e| panic!("bind the {} double: {e}", self.name));
        assert!(
            self.port == 0 || port == self.port,
            "{} moved ports",
            self.name
        );
        server.start();
        self.port = port;
        self.server = Some(server);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}
