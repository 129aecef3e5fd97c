//! Certificate rotation without restart, and certificate expiry.
//!
//! A watcher thread re-reads every certificate and key file each CERT_RELOAD_INTERVAL (by path, so a
//! Kubernetes `..data` symlink swap is seen like any other change). Changed material is validated
//! exactly as at start-up; valid material is published and every allocator worker switches to a new
//! channel before its next match, invalid material is rejected with an ERROR naming the file (the old
//! material stays in use).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::select;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsMaterial};

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often unchanged certificates are checked again for nearing expiry.
const EXPIRY_RECHECK: Duration = Duration::from_secs(3600);

/// A value that can be replaced while threads use it; each replacement bumps the generation.
pub struct Versioned<T> {
    generation: AtomicU64,
    value: RwLock<Arc<T>>,
}

impl<T> Versioned<T> {
    /// Generation 0 holding `value`.
    pub fn new(value: T) -> Versioned<T> {
        Versioned {
            generation: AtomicU64::new(0),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The current generation, cheap enough to check before every match.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn current(&self) -> (u64, Arc<T>) {
        let value = self.value.read().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), Arc::clone(&value))
    }

    /// Publishes a new value.
    pub fn replace(&self, value: T) {
        let mut current = self.value.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(value);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

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
    /// `agones` or `openmatch`, for logs and metrics.
    pub endpoint: &'static str,
    /// Its files.
    pub files: TlsFiles,
    /// Publishes valid new material.
    pub apply: Box<dyn Fn(TlsMaterial) + Send>,
}

/// Starts the watcher thread; it ends when shutdown is requested.
pub fn watch(
    endpoints: Vec<Watched>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<()> {
    let mut seen: Vec<Vec<Vec<u8>>> = endpoints.iter().map(|e| e.files.snapshot()).collect();
    let mut expiry_checked = Instant::now();
    std::thread::Builder::new()
        .name("cert-watch".into())
        .spawn(move || loop {
            select! {
                recv(shutdown.requested_channel()) -> _ => return,
                default(interval) => {}
            }
            for (endpoint, last) in endpoints.iter().zip(seen.iter_mut()) {
                let now = endpoint.files.snapshot();
                if now != *last {
                    *last = now;
                    reload(endpoint, &metrics);
                }
            }
            if expiry_checked.elapsed() >= EXPIRY_RECHECK {
                expiry_checked = Instant::now();
                for material in endpoints.iter().filter_map(|e| e.files.load().ok()) {
                    record_expiry(&material, &metrics);
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
                .inc(&[endpoint.endpoint, "success"]);
            log::info!(
                "Reloaded the {} TLS material from {}; new connections use it from the next match",
                endpoint.endpoint,
                endpoint.files.ca.display()
            );
        }
        Err(problem) => {
            metrics
                .certificate_reloads
                .inc(&[endpoint.endpoint, "failure"]);
            log::error!(
                "Rejected new {} TLS material, keeping the previous one: {problem}",
                endpoint.endpoint
            );
        }
    }
}

/// Exposes the expiry of every certificate file of `material` and warns about near ones.
pub fn record_expiry(material: &TlsMaterial, metrics: &Metrics) {
    for (_, file) in material.certificate_files() {
        let Ok(certificates) = tls::parse_certificates(&file.path, &file.pem) else {
            continue;
        };
        let Some(not_after) = certificates.iter().map(|(_, s)| s.not_after).min() else {
            continue;
        };
        let path = file.path.display().to_string();
        metrics.set_certificate_expiry(&path, not_after);
        let left = not_after - unix_now();
        if left < EXPIRY_WARNING.as_secs() as i64 {
            log::warn!(
                "Certificate {path} expires {} ({})",
                crate::x509::format_utc(not_after),
                if left < 0 {
                    "already expired".to_string()
                } else {
                    format!("in {:.1} days", left as f64 / 86_400.0)
                }
            );
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_bumps_generation_on_replace() {
        let value = Versioned::new(1);
        assert_eq!(value.current(), (0, Arc::new(1)));
        value.replace(2);
        assert_eq!(value.generation(), 1);
        assert_eq!(*value.current().1, 2);
    }
}
