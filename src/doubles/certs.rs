//! Test certificates, generated at test time: a CA that issues server and client certificates.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate authority for tests.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Clone, Copy)]
pub enum Usage {
    /// A TLS server certificate.
    Server,
    /// A TLS client certificate.
    Client,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> TestCa {
        TestCa::new_with(name, |_| {})
    }

    /// A CA that TLS stacks accept but whose names [`crate::x509`] cannot follow: its subject
    /// alternative names hold a name whose length runs past the list. TLS stacks read that list
    /// only to match the server name of a leaf certificate, never a CA's.
    pub fn with_unreadable_names(name: &str) -> TestCa {
        TestCa::new_with(name, |params| {
            let names_overrunning_their_list = vec![0x30, 0x04, 0x82, 0x05, b'a', b'b'];
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    names_overrunning_their_list,
                ));
        })
    }

    fn new_with(name: &str, adjust: impl FnOnce(&mut CertificateParams)) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        adjust(&mut params);
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str], usage: Usage) -> Issued {
        self.issue_with(names, usage, |_| {})
    }

    /// A leaf certificate that expired on 2020-01-01.
    pub fn issue_expired(&self, names: &[&str], usage: Usage) -> Issued {
        self.issue_with(names, usage, |params| {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: Usage,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        adjust(&mut params);
        params
            .distinguished_name
            .push(DnType::CommonName, "agones-openmatch-director test");
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A Kubernetes-style Secret volume: `name -> ..data/name`, `..data -> ..<version>/`, updated the
/// way the kubelet updates a mounted Secret.
pub struct SecretVolume<'a> {
    /// The mount point.
    pub dir: &'a Path,
    /// The version last published.
    pub version: usize,
}

impl SecretVolume<'_> {
    /// Writes a new version of the files and swaps `..data` to it atomically.
    pub fn publish(&mut self, files: &[(&str, impl AsRef<[u8]>)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).expect("create version dir");
        for (name, contents) in files {
            std::fs::write(self.dir.join(&version).join(name), contents.as_ref())
                .expect("write file");
            let link = self.dir.join(name);
            if !link.exists() {
                symlink(format!("..data/{name}"), link).expect("link file");
            }
        }
        symlink(&version, self.dir.join("..data_tmp")).expect("link ..data_tmp");
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap ..data");
    }
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory whose name contains `label`.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "director-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
