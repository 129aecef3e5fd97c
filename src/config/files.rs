//! The files that variables name, loaded while the configuration is read: TLS material, the
//! Global Accelerator mappings and the request file. Every problem is recorded under the variable
//! that named the file; `None` stands in for what did not load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::reader::Reader;
use super::MappingConfig;
use crate::mapping;
use crate::proto::allocation::AllocationRequest;
use crate::request_template;
use crate::tls::{self, PemFile, TlsMaterial};

/// `GA_MAPPING_DIR`: the Global Accelerator mapping of every region in `dir`, loaded now.
pub(super) fn load_mapping(
    r: &mut Reader,
    dir: PathBuf,
    regions: &[String],
) -> Option<MappingConfig> {
    match mapping::load(&dir, regions) {
        Ok(loaded) => Some(MappingConfig {
            dir,
            loaded: Arc::new(loaded),
        }),
        Err(problems) => {
            for problem in problems {
                r.problem("GA_MAPPING_DIR", &problem);
            }
            None
        }
    }
}

/// `ALLOCATION_REQUEST_FILE`: the JSON AllocationRequest at `path`; each problem is reported with
/// its JSON path.
pub(super) fn load_request_template(r: &mut Reader, path: &str) -> Option<AllocationRequest> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            r.problem(
                "ALLOCATION_REQUEST_FILE",
                &format!("cannot read {path}: {e}"),
            );
            return None;
        }
    };
    match request_template::parse(&text) {
        Ok(template) => Some(template),
        Err(problems) => {
            for problem in problems {
                r.problem("ALLOCATION_REQUEST_FILE", &format!("{path}: {problem}"));
            }
            None
        }
    }
}

/// The service account's `ca.crt` in `dir` (SERVICE_ACCOUNT_DIR).
pub(super) fn load_service_account_ca(r: &mut Reader, dir: &Path) -> Option<PemFile> {
    tls::load_ca(&dir.join("ca.crt"))
        .map_err(|why| r.problem("SERVICE_ACCOUNT_DIR", &why))
        .ok()
}

/// The trimmed text of the service account's file `name` in `dir`; a problem under `variable`
/// when it cannot be read or is empty.
pub(super) fn read_service_account_file(
    r: &mut Reader,
    dir: &Path,
    name: &str,
    variable: &str,
) -> String {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
        Ok(_) => {
            r.problem(variable, &format!("{} is empty", path.display()));
            String::new()
        }
        Err(e) => {
            r.problem(variable, &format!("cannot read {}: {e}", path.display()));
            String::new()
        }
    }
}

/// A region's TLS directory: `tls.crt`, `tls.key` and `ca.crt`, the layout of a mounted
/// Kubernetes TLS Secret. Problems name the variable, the region and the file.
pub(super) fn load_tls_dir(r: &mut Reader, region: &str, dir: &Path) -> Option<TlsMaterial> {
    let var = format!("AGONES_TLS_DIRS ({region})");
    let file = |name: &str| dir.join(name).display().to_string();
    let var = var.as_str();
    load_tls(
        r,
        (var, file("ca.crt")),
        Some((var, file("tls.crt"), var, file("tls.key"))),
    )
}

/// Loads a CA file and an optional client identity, recording every problem under its variable.
pub(super) fn load_tls(
    r: &mut Reader,
    (ca_var, ca_path): (&str, String),
    identity: Option<(&str, String, &str, String)>,
) -> Option<TlsMaterial> {
    let ca = tls::load_ca(&PathBuf::from(&ca_path)).map_err(|why| r.problem(ca_var, &why));
    let identity = match identity {
        None => Ok(None),
        Some((cert_var, cert_path, key_var, key_path)) => {
            tls::load_identity(&PathBuf::from(cert_path), &PathBuf::from(key_path))
                .map(Some)
                .map_err(|problems| {
                    for problem in problems {
                        let var = match problem.file {
                            tls::IdentityFile::Certificate => cert_var,
                            tls::IdentityFile::Key => key_var,
                        };
                        r.problem(var, &problem.message);
                    }
                })
        }
    };
    Some(TlsMaterial {
        ca: ca.ok()?,
        identity: identity.ok()?,
    })
}
