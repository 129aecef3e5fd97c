//! `director check`: a preflight that explains, in plain words, whether the configuration can work.
//!
//! It validates the configuration, reports every certificate's validity, then performs the TLS
//! handshake with the Agones allocator itself (rustls on a plain TCP connection, not gRPC) to tell
//! *why* mTLS fails when it does: unknown issuer, expired, not valid for the dialled name (with the
//! names the certificate is valid for), or our client certificate rejected — with TLS 1.3 that
//! rejection only arrives as an alert after the handshake, so the check sends the HTTP/2 preface and
//! reads the answer. Then it makes one harmless call to the Open Match backend and, with leader
//! election, reads the Lease and asks the API server, in dry runs, whether it may create and
//! update it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grpcio::EnvBuilder;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};

use crate::config::{Config, Endpoint, MappingConfig};
use crate::openmatch::{self, OpenMatchClient};
use crate::sync::lock;
use crate::tls::{self, TlsMaterial};
use crate::x509::{format_utc, unix_now, CertSummary, Validity};

mod lease;

/// How long each network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The report, and whether everything is usable.
pub struct Report {
    /// Human-readable lines.
    pub text: String,
    /// `true` when the Director can work with this configuration.
    pub usable: bool,
}

/// Runs every check and writes the report.
pub fn run(config: &Config) -> Report {
    let mut report = Report {
        text: String::new(),
        usable: true,
    };
    report.line(&format!(
        "Configuration: valid ({} regions × {} bands)",
        config.profiles.regions.len(),
        config.profiles.bands.len()
    ));
    let agones = &config.agones;
    let mut shared_reported = false;
    for (region, target) in &agones.targets {
        let settings = match &target.tls_dir {
            Some(_) => TlsSettings::region_dir(region),
            None if shared_reported => continue,
            None => {
                shared_reported = true;
                TlsSettings::of("AGONES")
            }
        };
        report.certificates(&settings, &target.tls);
    }
    if let Some(material) = &config.openmatch.tls {
        report.certificates(&TlsSettings::of("OPENMATCH"), material);
    }
    for (region, target) in &agones.targets {
        let name = target
            .tls_server_name
            .clone()
            .unwrap_or_else(|| target.endpoint.host.clone());
        report.line(&format!(
            "Region {region}: Agones allocator {} (certificate checked for the name {name:?}{}):",
            target.endpoint,
            if target.multicluster {
                "; multi-cluster allocation on"
            } else {
                ""
            }
        ));
        let settings = match &target.tls_dir {
            Some(_) => TlsSettings::region_dir(region),
            None => TlsSettings::of("AGONES"),
        };
        report.handshake(&target.endpoint, &name, &target.tls, &settings);
    }
    if let Some(mapping) = &config.mapping {
        report.mappings(mapping);
    }
    let om = &config.openmatch;
    report.line(&format!("Open Match backend {}:", om.backend));
    if let Some(material) = &om.tls {
        report.handshake(
            &om.backend,
            &om.backend.host,
            material,
            &TlsSettings::of("OPENMATCH"),
        );
    }
    report.openmatch_answers(config);
    if let Some(election) = &config.leader_election {
        report.lease_access(election);
    }
    report.line(if report.usable {
        "Result: everything is usable."
    } else {
        "Result: NOT usable — see the lines marked FAIL."
    });
    report
}

impl Report {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.text, "{text}");
    }

    fn ok(&mut self, text: &str) {
        self.line(&format!("  ok    {text}"));
    }

    fn warn(&mut self, text: &str) {
        self.line(&format!("  WARN  {text}"));
    }

    fn fail(&mut self, text: &str) {
        self.usable = false;
        self.line(&format!("  FAIL  {text}"));
    }

    /// Validity of every certificate file of `material`; an expired one fails the check.
    fn certificates(&mut self, settings: &TlsSettings, material: &TlsMaterial) {
        self.line(&format!("{} certificates:", settings.name));
        for (suffix, file) in material.certificate_files() {
            let var = match suffix {
                "CA_CERT" => &settings.ca,
                _ => &settings.client_cert,
            };
            for (index, summary) in tls::summaries(file).iter().enumerate() {
                let what = format!("{var} {} #{}", file.path.display(), index + 1);
                self.validity(&what, summary);
            }
        }
    }

    /// Every region's Global Accelerator mapping: its files, entries, skipped entries, accelerator.
    fn mappings(&mut self, mapping: &MappingConfig) {
        self.line(&format!(
            "Global Accelerator mappings (GA_MAPPING_DIR {}):",
            mapping.dir.display()
        ));
        for (region, loaded) in &mapping.loaded.regions {
            let [mapping_file, accelerator_file] = &loaded.files;
            let text = format!(
                "region {region}: {} with {} entries ({} skipped); accelerator {} from {}",
                mapping_file.display(),
                loaded.len(),
                loaded.bad_entries,
                loaded.accelerator,
                accelerator_file.display()
            );
            if loaded.bad_entries == 0 {
                self.ok(&text);
            } else {
                self.warn(&format!(
                    "{text}; first skipped keys: {:?}",
                    loaded.bad_keys
                ));
            }
        }
    }

    /// The validity of one certificate; dates that could not be read are a warning, not a failure.
    fn validity(&mut self, what: &str, summary: &Result<CertSummary, String>) {
        let summary = match summary {
            Ok(summary) => summary,
            Err(reason) => return self.warn(&format!("{what}: dates unknown ({reason})")),
        };
        let now = unix_now();
        let period = format!(
            "valid from {} until {}",
            format_utc(summary.not_before),
            format_utc(summary.not_after)
        );
        match summary.validity(now) {
            Validity::Expired => self.fail(&format!("{what}: EXPIRED — {period}")),
            Validity::NotYetValid => self.fail(&format!("{what}: not valid yet — {period}")),
            Validity::ExpiresSoon => {
                self.warn(&format!("{what}: expires within 7 days — {period}"))
            }
            Validity::Valid => self.ok(&format!("{what}: {period}")),
        }
    }

    /// Connects, performs the TLS handshake, and (for mTLS) finds out whether the server accepted
    /// our client certificate.
    fn handshake(
        &mut self,
        endpoint: &Endpoint,
        name: &str,
        material: &TlsMaterial,
        settings: &TlsSettings,
    ) {
        let mut tcp = match connect(endpoint) {
            Ok(tcp) => tcp,
            Err(problem) => return self.fail(&problem),
        };
        self.ok(&format!("TCP connection to {endpoint}"));
        let probe = match Probe::new(material, name) {
            Ok(probe) => probe,
            Err(problem) => return self.fail(&problem),
        };
        let mut connection =
            match ClientConnection::new(Arc::clone(&probe.config), probe.name.clone()) {
                Ok(connection) => connection,
                Err(error) => return self.fail(&format!("cannot start TLS: {error}")),
            };
        let handshake = complete_handshake(&mut connection, &mut tcp);
        let tls_failure = match &handshake {
            Err(NoAnswer::Rejected(error)) => Some(error),
            _ => None,
        };
        self.server_certificate(&probe, name, settings, tls_failure);
        match handshake {
            Ok(()) => {}
            Err(NoAnswer::Silent) => {
                return self.fail(&format!(
                    "the server stopped answering during the TLS handshake (nothing within {STEP_TIMEOUT:?}): it is hung or overloaded"
                ))
            }
            Err(NoAnswer::Rejected(rustls::Error::InvalidCertificate(_))) => return,
            Err(NoAnswer::Rejected(error)) if probe.client_certificate_requested() => {
                return self.fail(&client_rejection(&error))
            }
            Err(NoAnswer::Rejected(error)) => {
                return self.fail(&format!("TLS handshake failed: {error}"))
            }
        }
        let version = connection
            .protocol_version()
            .map_or("TLS".to_string(), |v| format!("{v:?}"));
        self.ok(&format!("{version} handshake completed"));
        match (material.identity.is_some(), probe.client_certificate_requested()) {
            (_, false) => self.warn("the server did not ask for a client certificate"),
            (false, true) => self.fail(&format!(
                "the server asks for a client certificate: set {} and {}",
                settings.client_cert, settings.client_key
            )),
            (true, true) => match first_answer(&mut connection, &mut tcp) {
                Ok(()) => self.ok("the server asked for our client certificate and accepted it"),
                Err(NoAnswer::Rejected(error)) => self.fail(&client_rejection(&error)),
                Err(NoAnswer::Silent) => self.fail(&format!(
                    "the handshake completed, then the server sent nothing within {STEP_TIMEOUT:?}: it is hung or overloaded, or not a gRPC server (whether it accepts our client certificate is unknown)"
                )),
            },
        }
    }

    /// Reports the server's certificate: verified, or why not, with its names and dates.
    fn server_certificate(
        &mut self,
        probe: &Probe,
        name: &str,
        settings: &TlsSettings,
        error: Option<&rustls::Error>,
    ) {
        let chain = probe.verifier.presented();
        let summary = chain.first().map(|der| crate::x509::summarize(der));
        let names = match &summary {
            Some(Ok(summary)) => summary.names().join(", "),
            _ => "(unreadable)".to_string(),
        };
        match error {
            Some(rustls::Error::InvalidCertificate(problem)) => {
                self.fail(&certificate_problem(problem, name, &names, settings));
            }
            _ if chain.is_empty() => {}
            _ => self.ok(&format!(
                "server certificate verified against {}; valid for: {names}",
                settings.ca
            )),
        }
        if let Some(summary) = &summary {
            self.validity("server certificate", summary);
        }
    }

    /// One ReleaseTickets call with no tickets: harmless, and proves the backend answers.
    fn openmatch_answers(&mut self, config: &Config) {
        let om = &config.openmatch;
        let env = Arc::new(EnvBuilder::new().cq_count(1).build());
        let channel = openmatch::connect(env, &om.backend, om.tls.as_ref());
        let client = OpenMatchClient::new(channel, &om.match_function);
        match client.release(&[], STEP_TIMEOUT) {
            Ok(()) => self.ok("the backend answers (ReleaseTickets with no tickets: OK)"),
            Err(error) => self.fail(&format!("the backend does not answer: {error}")),
        }
    }
}

fn connect(endpoint: &Endpoint) -> Result<TcpStream, String> {
    let target = endpoint.target();
    let addresses: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
        .collect();
    let mut last_error = format!("{} resolves to no address", endpoint.host);
    for address in addresses {
        match TcpStream::connect_timeout(&address, STEP_TIMEOUT) {
            Ok(tcp) => {
                let _ = tcp.set_read_timeout(Some(STEP_TIMEOUT));
                let _ = tcp.set_write_timeout(Some(STEP_TIMEOUT));
                return Ok(tcp);
            }
            Err(e) => last_error = format!("cannot connect to {target} ({address}): {e}"),
        }
    }
    Err(last_error)
}

fn complete_handshake(
    connection: &mut ClientConnection,
    tcp: &mut TcpStream,
) -> Result<(), NoAnswer> {
    while connection.is_handshaking() {
        connection.complete_io(tcp)?;
    }
    Ok(())
}

/// Why the server did not complete the handshake or answer the HTTP/2 preface.
enum NoAnswer {
    /// It closed the connection or sent an alert: a TLS 1.3 server's way to reject the client
    /// certificate after the handshake.
    Rejected(rustls::Error),
    /// Nothing arrived before the read timeout.
    Silent,
}

impl From<std::io::Error> for NoAnswer {
    fn from(error: std::io::Error) -> NoAnswer {
        match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => NoAnswer::Silent,
            _ => NoAnswer::Rejected(tls_error(error)),
        }
    }
}

/// Sends the HTTP/2 preface and waits for the server's first bytes (its SETTINGS) — or the alert
/// by which a TLS 1.3 server rejects the client certificate.
fn first_answer(connection: &mut ClientConnection, tcp: &mut TcpStream) -> Result<(), NoAnswer> {
    connection.writer().write_all(HTTP2_PREFACE)?;
    let mut buffer = [0u8; 256];
    loop {
        connection.complete_io(tcp)?;
        match connection.reader().read(&mut buffer) {
            Ok(0) => {
                return Err(NoAnswer::Rejected(rustls::Error::General(
                    "the server closed the connection".into(),
                )))
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(NoAnswer::Rejected(tls_error(e))),
        }
    }
}

/// The rustls error inside an I/O error, or the I/O error as text.
fn tls_error(error: std::io::Error) -> rustls::Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(inner) => inner.clone(),
        None => rustls::Error::General(error.to_string()),
    }
}

fn client_rejection(error: &rustls::Error) -> String {
    let how = match error {
        rustls::Error::AlertReceived(alert) => format!("alert {alert:?}"),
        _ => "it closed the connection right after the handshake".to_string(),
    };
    format!(
        "the server rejected our client certificate ({how}): it must chain to a CA the server trusts (for Agones, the secret allocator-client-ca), be within its validity period, and allow client authentication"
    )
}

fn certificate_problem(
    problem: &CertificateError,
    name: &str,
    names: &str,
    settings: &TlsSettings,
) -> String {
    match problem {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a CA in {} (unknown issuer); it is valid for: {names}",
            settings.ca
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let suggestion = match &settings.server_name {
                Some(setting) => format!("; set {setting} to one of them"),
                None => String::new(),
            };
            format!(
                "the server's certificate is not valid for the name {name:?}; it is valid for: {names}{suggestion}"
            )
        }
        other => format!("the server's certificate was rejected: {other:?}"),
    }
}

/// The settings an endpoint's TLS comes from, named in advice to the operator.
struct TlsSettings {
    /// What the material is called in headings.
    name: String,
    ca: String,
    client_cert: String,
    client_key: String,
    /// The setting that overrides the name the server certificate is checked for, if any.
    server_name: Option<String>,
}

impl TlsSettings {
    /// `<prefix>_CA_CERT`, `<prefix>_CLIENT_CERT`, `<prefix>_CLIENT_KEY`.
    fn of(prefix: &str) -> TlsSettings {
        TlsSettings {
            name: prefix.to_string(),
            ca: format!("{prefix}_CA_CERT"),
            client_cert: format!("{prefix}_CLIENT_CERT"),
            client_key: format!("{prefix}_CLIENT_KEY"),
            server_name: (prefix == "AGONES").then(|| "AGONES_TLS_SERVER_NAME".to_string()),
        }
    }

    /// The files of a region's AGONES_TLS_DIRS directory.
    fn region_dir(region: &str) -> TlsSettings {
        let file = |name: &str| format!("{name} of AGONES_TLS_DIRS ({region})");
        TlsSettings {
            name: format!("AGONES_TLS_DIRS ({region})"),
            ca: file("ca.crt"),
            client_cert: file("tls.crt"),
            client_key: file("tls.key"),
            server_name: Some(format!("AGONES_TLS_SERVER_NAMES ({region}=…)")),
        }
    }
}

/// A rustls client set up like the Director's gRPC client, recording what the server showed.
struct Probe {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    verifier: Arc<RecordingVerifier>,
    resolver: Option<Arc<RecordingResolver>>,
}

impl Probe {
    fn new(material: &TlsMaterial, name: &str) -> Result<Probe, String> {
        let provider = Arc::new(ring::default_provider());
        let roots = tls::root_store(&material.ca);
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
        let verifier = Arc::new(RecordingVerifier {
            inner,
            presented: Mutex::new(Vec::new()),
        });
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let (mut config, resolver) = match &material.identity {
            None => (builder.with_no_client_auth(), None),
            Some(identity) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&identity.cert_chain.pem)
                        .flatten()
                        .collect();
                let key = PrivateKeyDer::from_pem_slice(identity.key.expose())
                    .map_err(|e| format!("{}: {e}", identity.key_path.display()))?;
                let key = provider
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| format!("{}: {e}", identity.key_path.display()))?;
                let resolver = Arc::new(RecordingResolver {
                    key: Arc::new(CertifiedKey::new(chain, key)),
                    asked: AtomicBool::new(false),
                });
                (
                    builder.with_client_cert_resolver(resolver.clone()),
                    Some(resolver),
                )
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("{name:?} is not a valid DNS name or IP address"))?;
        Ok(Probe {
            config: Arc::new(config),
            name,
            verifier,
            resolver,
        })
    }

    fn client_certificate_requested(&self) -> bool {
        self.resolver
            .as_ref()
            .is_some_and(|r| r.asked.load(Ordering::SeqCst))
    }
}

/// Verifies like rustls' WebPKI verifier, and keeps the chain the server presented.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    presented: Mutex<Vec<CertificateDer<'static>>>,
}

impl RecordingVerifier {
    fn presented(&self) -> Vec<CertificateDer<'static>> {
        lock(&self.presented).clone()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *lock(&self.presented) = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Offers our client certificate, and remembers whether the server asked for one.
#[derive(Debug)]
struct RecordingResolver {
    key: Arc<CertifiedKey>,
    asked: AtomicBool,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        Some(Arc::clone(&self.key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
