//! Server-side TLS for the doubles.

use grpcio::{CertificateRequestType, ServerCredentials, ServerCredentialsBuilder};

use super::certs::Issued;

/// A server certificate, and the CA whose client certificates are required (`None`: no mTLS).
pub struct ServerTls {
    /// The CA whose client certificates are required; `None`: no client certificate asked.
    pub client_ca_pem: Option<String>,
    /// The server's certificate and key.
    pub server: Issued,
}

impl ServerTls {
    /// gRPC server credentials; with a client CA, a verified client certificate is required.
    pub fn credentials(&self) -> ServerCredentials {
        let mut builder = ServerCredentialsBuilder::new().add_cert(
            self.server.cert_pem.clone().into_bytes(),
            self.server.key_pem.clone().into_bytes(),
        );
        if let Some(ca) = &self.client_ca_pem {
            builder = builder.root_cert(
                ca.clone(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            );
        }
        builder.build()
    }
}
