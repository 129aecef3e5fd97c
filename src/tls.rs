//! TLS material: PEM files read once, validated with rustls, and turned into gRPC credentials.
//!
//! rustls (and its webpki) decide whether a certificate is usable and whether a key belongs to it.
//! The dates and names the Director reports come from [`crate::x509`], best-effort: a certificate
//! that reader cannot follow is still used, and its dates are reported as unknown.
//!
//! Private keys are held in [`SecretPem`], whose `Debug` never shows the key.

use std::fmt;
use std::path::{Path, PathBuf};

use grpcio::{ChannelCredentials, ChannelCredentialsBuilder};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys, RootCertStore};

use crate::x509::{self, CertSummary};

/// A PEM file's path and contents.
#[derive(Clone, Debug)]
pub struct PemFile {
    /// Where the file was read from.
    pub path: PathBuf,
    /// The file's bytes.
    pub pem: Vec<u8>,
}

/// A private key's PEM bytes; `Debug` redacts them.
#[derive(Clone)]
pub struct SecretPem(Vec<u8>);

impl SecretPem {
    /// The PEM bytes, for handing to the TLS stack only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A client certificate chain and the private key that matches it.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_chain: PemFile,
    /// Path of the key file.
    pub key_path: PathBuf,
    /// The key itself.
    pub key: SecretPem,
}

/// What a TLS client needs: CA certificates, and a client identity for mTLS.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// Certificates the server's chain must lead to.
    pub ca: PemFile,
    /// Client certificate and key; `None` for server-only TLS.
    pub identity: Option<ClientIdentity>,
}

impl TlsMaterial {
    /// The certificate files: the CA bundle, then the client certificate chain if any, each with
    /// the suffix of the variable that names it (`CA_CERT`, `CLIENT_CERT`).
    pub fn certificate_files(&self) -> impl Iterator<Item = (&'static str, &PemFile)> {
        std::iter::once(("CA_CERT", &self.ca)).chain(
            self.identity
                .iter()
                .map(|identity| ("CLIENT_CERT", &identity.cert_chain)),
        )
    }
}

/// Which of the two identity files a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityFile {
    /// The certificate chain file.
    Certificate,
    /// The private key file.
    Key,
}

/// A problem with a client identity, attributed to one of its files.
#[derive(Debug, PartialEq, Eq)]
pub struct IdentityProblem {
    /// The file at fault.
    pub file: IdentityFile,
    /// What is wrong, naming the file's path.
    pub message: String,
}

/// The trust anchors of a CA bundle that [`load_ca`] accepted.
pub fn root_store(ca: &PemFile) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.pem).flatten() {
        let _ = roots.add(cert);
    }
    roots
}

/// Reads a CA bundle and checks, with webpki, that every certificate in it can be a trust anchor.
pub fn load_ca(path: &Path) -> Result<PemFile, String> {
    let pem = read_pem_file(path)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in pem_certificates(path, &pem)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| not_a_certificate(index, path, &e))?;
    }
    Ok(PemFile {
        path: path.to_path_buf(),
        pem,
    })
}

/// Reads a certificate chain and its private key, and checks that the key belongs to the leaf.
pub fn load_identity(
    cert_path: &Path,
    key_path: &Path,
) -> Result<ClientIdentity, Vec<IdentityProblem>> {
    let cert_problem = |message| IdentityProblem {
        file: IdentityFile::Certificate,
        message,
    };
    let key_problem = |message| IdentityProblem {
        file: IdentityFile::Key,
        message,
    };
    let chain = read_pem_file(cert_path).and_then(|pem| {
        let certs = pem_certificates(cert_path, &pem)?;
        Ok((pem, certs))
    });
    let key = read_pem_file(key_path).and_then(|pem| {
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{} holds no PEM private key: {e}", key_path.display()))?;
        Ok((pem, der))
    });
    let ((chain_pem, certs), (key_pem, key_der)) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            let mut problems = Vec::new();
            problems.extend(chain.err().map(cert_problem));
            problems.extend(key.err().map(key_problem));
            return Err(problems);
        }
    };
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            vec![key_problem(format!(
                "{} is not a supported private key: {e}",
                key_path.display()
            ))]
        })?;
    match CertifiedKey::new(certs, signing_key).keys_match() {
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(vec![key_problem(format!(
                "{} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            ))]);
        }
        Err(e) => return Err(vec![cert_problem(not_a_certificate(0, cert_path, &e))]),
    }
    Ok(ClientIdentity {
        cert_chain: PemFile {
            path: cert_path.to_path_buf(),
            pem: chain_pem,
        },
        key_path: key_path.to_path_buf(),
        key: SecretPem(key_pem),
    })
}

/// gRPC channel credentials for this material.
pub fn channel_credentials(material: &TlsMaterial) -> ChannelCredentials {
    let builder = ChannelCredentialsBuilder::new().root_cert(material.ca.pem.clone());
    match &material.identity {
        Some(identity) => builder
            .cert(
                identity.cert_chain.pem.clone(),
                identity.key.expose().to_vec(),
            )
            .build(),
        None => builder.build(),
    }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.contains(&0) {
        return Err(format!(
            "{} contains a NUL byte: not a PEM file",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of a PEM file; at least one.
fn pem_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn not_a_certificate(index: usize, path: &Path, error: &dyn fmt::Display) -> String {
    format!(
        "certificate #{} in {} is not a valid X.509 certificate: {error}",
        index + 1,
        path.display()
    )
}

/// What the Director reports about each certificate of a loaded file, in order: its dates and
/// names, or why [`x509::summarize`] could not read them.
pub fn summaries(file: &PemFile) -> Vec<Result<CertSummary, String>> {
    CertificateDer::pem_slice_iter(&file.pem)
        .map(|cert| {
            cert.map_err(|e| e.to_string())
                .and_then(|der| x509::summarize(&der))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::certs::{TempDir, TestCa, Usage};

    /// A real CA, client certificate and key in PEM, made once.
    fn seeds() -> &'static (String, String, String) {
        static SEEDS: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
        SEEDS.get_or_init(|| {
            let ca = TestCa::new("pem-fuzz-ca");
            let client = ca.issue(&["director"], Usage::Client);
            (ca.pem(), client.cert_pem, client.key_pem)
        })
    }

    /// `text` with `edits` applied: each replaces one byte, or (for byte 0) cuts the text there.
    fn mutate(text: &str, edits: &[(usize, u8)]) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, byte) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = at % bytes.len();
            if byte == 0 {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
        }
        bytes
    }

    #[test]
    fn a_certificate_whose_dates_and_names_cannot_be_read_is_still_loaded() {
        let ca = TestCa::with_unreadable_names("best-effort-ca");
        let dir = TempDir::new("best-effort");
        let ca = load_ca(&dir.write("ca.crt", ca.pem())).expect("usable CA");
        let summaries = summaries(&ca);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0], Err("malformed DER".to_string()));
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn mutated_pem_files_load_or_name_the_file(
                which in 0usize..3,
                edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..6)
            ) {
                let (ca, cert, key) = seeds();
                let dir = TempDir::new("pem-fuzz");
                let mut files = [ca.as_bytes().to_vec(), cert.as_bytes().to_vec(), key.as_bytes().to_vec()];
                files[which] = mutate([ca, cert, key][which], &edits);
                let ca_path = dir.write("ca.crt", &files[0]);
                let cert_path = dir.write("tls.crt", &files[1]);
                let key_path = dir.write("tls.key", &files[2]);
                if let Err(problem) = load_ca(&ca_path) {
                    proptest::prop_assert!(problem.contains(&ca_path.display().to_string()), "{problem}");
                }
                if let Err(problems) = load_identity(&cert_path, &key_path) {
                    for problem in problems {
                        let path = match problem.file {
                            IdentityFile::Certificate => &cert_path,
                            IdentityFile::Key => &key_path,
                        };
                        proptest::prop_assert!(problem.message.contains(&path.display().to_string()), "{}", problem.message);
                    }
                }
            }
        }
    }
}
