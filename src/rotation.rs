//! Certificate rotation without restart, and certificate expiry.
//!
//! A watcher thread re-reads every certificate and key file each CERT_RELOAD_INTERVAL (by path, so a
//! Kubernetes `..data` symlink swap is seen like any other change). Changed material is validated
//! exactly as at start-up; valid material is published and every allocator worker switches to a new
//! channel before its next match, invalid material is rejected with an ERROR naming the file (the old
//! material stays in use).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsMaterial};
use crate::x509::{unix_now, Validity};

/// How often unchanged certificates are checked again for nearing expiry.
const EXPIRY_RECHECK: Duration = Duration::from_secs(3600);

/// The files of one endpoint's TLS material.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA bundle.
    pub ca: PathBuf,
    /// Client certificate and key, for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The files `material` was read from.
    pub fn of(material: &TlsMaterial) -> TlsFiles {
        TlsFiles {
            ca: material.ca.path.clone(),
            identity: material
                .identity
                .as_ref()
                .map(|i| (i.cert_chain.path.clone(), i.key_path.clone())),
        }
    }

    /// Reads and validates the files, as at start-up; every problem names its file.
    pub fn load(&self) -> Result<TlsMaterial, String> {
        let ca = tls::load_ca(&self.ca);
        let identity = match &self.identity {
            None => Ok(None),
            Some((cert, key)) => tls::load_identity(cert, key).map(Some).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| p.message)
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        };
        match (ca, identity) {
            (Ok(ca), Ok(identity)) => Ok(TlsMaterial { ca, identity }),
            (ca, identity) => Err([ca.err(), identity.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// The raw bytes of every file (missing files read as empty), to notice changes cheaply.
    fn snapshot(&self) -> Vec<Vec<u8>> {
        let mut paths = vec![&self.ca];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert, key]);
        }
        paths
            .into_iter()
            .map(|p| std::fs::read(p).unwrap_or_default())
            .collect()
    }
}

/// One endpoint under watch: its name, its files, and what to do with valid new material.
pub struct Watched {
    /// `openmatch`, `agones` (the shared Agones material) or `agones-<region>` (a region's own
    /// AGONES_TLS_DIRS directory), for logs and metrics.
    pub endpoint: String,
    /// Its files.
    files: TlsFiles,
    /// The bytes the material in use was loaded from, in [`TlsFiles::snapshot`]'s order: a file
    /// that differs from them has changed, even if it changed before the watch began.
    in_use: Vec<Vec<u8>>,
    /// Publishes valid new material.
    apply: Box<dyn Fn(TlsMaterial) + Send>,
}

impl Watched {
    /// Watches the files `material` (in use now) was loaded from; `apply` publishes new material.
    pub fn new(
        endpoint: String,
        material: &TlsMaterial,
        apply: impl Fn(TlsMaterial) + Send + 'static,
    ) -> Watched {
        let mut in_use = vec![material.ca.pem.clone()];
        if let Some(identity) = &material.identity {
            in_use.extend([
                identity.cert_chain.pem.clone(),
                identity.key.expose().to_vec(),
            ]);
        }
        Watched {
            endpoint,
            files: TlsFiles::of(material),
            in_use,
            apply: Box::new(apply),
        }
    }
}

/// Files polled for changes: certificates ([`Watched`]) and Global Accelerator mappings.
pub trait Reloadable: Send {
    /// Loads the files again if they changed since the last look, and publishes what is valid.
    fn reload_if_changed(&mut self, metrics: &Metrics);

    /// Hourly, with the files unchanged: certificates warn again about nearing expiry.
    fn recheck(&self, _metrics: &Metrics) {}
}

impl Reloadable for Watched {
    fn reload_if_changed(&mut self, metrics: &Metrics) {
        let now = self.files.snapshot();
        if now != self.in_use {
            self.in_use = now;
            reload(self, metrics);
        }
    }

    fn recheck(&self, metrics: &Metrics) {
        if let Ok(material) = self.files.load() {
            record_expiry(&material, metrics);
        }
    }
}

/// Starts the watcher thread, which looks at every item each `interval`; it ends when shutdown
/// is requested.
pub fn watch(
    items: Vec<Box<dyn Reloadable>>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<()> {
    let mut items = items;
    let mut rechecked = Instant::now();
    std::thread::Builder::new()
        .name("file-watch".into())
        .spawn(move || loop {
            select! {
                recv(shutdown.requested_channel()) -> _ => return,
                default(interval) => {}
            }
            for item in &mut items {
                item.reload_if_changed(&metrics);
            }
            if rechecked.elapsed() >= EXPIRY_RECHECK {
                rechecked = Instant::now();
                for item in &items {
                    item.recheck(&metrics);
                }
            }
        })?;
    Ok(())
}

fn reload(endpoint: &Watched, metrics: &Metrics) {
    match endpoint.files.load() {
        Ok(material) => {
            record_expiry(&material, metrics);
            (endpoint.apply)(material);
            metrics
                .certificate_reloads
                .inc(&[&endpoint.endpoint, "success"]);
            log::info!(
                "Reloaded the {} TLS material from {}; new connections use it from the next match",
                endpoint.endpoint,
                endpoint.files.ca.display()
            );
        }
        Err(problem) => {
            metrics
                .certificate_reloads
                .inc(&[&endpoint.endpoint, "failure"]);
            log::error!(
                "Rejected new {} TLS material, keeping the previous one: {problem}",
                endpoint.endpoint
            );
        }
    }
}

/// Exposes the expiry of every certificate file of `material` and warns about near ones. A file
/// with a certificate whose dates cannot be read has an unknown expiry, and that is warned about.
pub fn record_expiry(material: &TlsMaterial, metrics: &Metrics) {
    for (_, file) in material.certificate_files() {
        let path = file.path.display().to_string();
        let summaries = tls::summaries(file);
        let unreadable = summaries
            .iter()
            .enumerate()
            .find_map(|(index, summary)| summary.as_ref().err().map(|reason| (index, reason)));
        if let Some((index, reason)) = unreadable {
            log::warn!(
                "Certificate #{} in {path}: dates unknown ({reason}); it is still used, its expiry is not reported",
                index + 1
            );
            metrics.set_certificate_expiry(&path, None);
            continue;
        }
        let Some(soonest) = summaries.iter().flatten().min_by_key(|s| s.not_after) else {
            continue;
        };
        metrics.set_certificate_expiry(&path, Some(soonest.not_after));
        let when = match soonest.validity(unix_now()) {
            Validity::Expired => "already expired".to_string(),
            Validity::ExpiresSoon => format!(
                "in {:.1} days",
                (soonest.not_after - unix_now()) as f64 / 86_400.0
            ),
            Validity::NotYetValid | Validity::Valid => continue,
        };
        log::warn!(
            "Certificate {path} expires {} ({when})",
            crate::x509::format_utc(soonest.not_after)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::certs::{TempDir, TestCa, Usage};

    #[test]
    fn a_change_made_before_the_watch_began_is_applied_at_its_first_look() {
        let dir = TempDir::new("rotation");
        let ca = TestCa::new("rotation-ca");
        let first = ca.issue(&["director"], Usage::Client);
        let ca_path = dir.write("ca.crt", ca.pem());
        let cert_path = dir.write("tls.crt", &first.cert_pem);
        let key_path = dir.write("tls.key", &first.key_pem);
        let in_use = TlsMaterial {
            ca: tls::load_ca(&ca_path).unwrap(),
            identity: Some(tls::load_identity(&cert_path, &key_path).unwrap()),
        };
        let second = ca.issue(&["director"], Usage::Client);
        dir.write("tls.crt", &second.cert_pem);
        dir.write("tls.key", &second.key_pem);

        let (applied, seen) = crossbeam_channel::bounded(1);
        let watched = Watched::new("agones".to_string(), &in_use, move |material| {
            let _ = applied.try_send(material);
        });
        let shutdown = Shutdown::new(Duration::ZERO);
        watch(
            vec![Box::new(watched)],
            Duration::from_millis(10),
            Arc::new(Metrics::new()),
            Arc::clone(&shutdown),
        )
        .unwrap();
        let material = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the change is applied");
        shutdown.request();
        let identity = material.identity.unwrap();
        assert_eq!(identity.cert_chain.pem, second.cert_pem.as_bytes());
    }
}
