//! An HTTPS double of the Kubernetes API server, as much of it as leader election uses: the
//! `coordination.k8s.io/v1` Leases of any namespace, with resource versions and 409 on a stale
//! write, bearer tokens (401 for any other), RBAC verbs (403 for a verb not granted), `dryRun`,
//! and a switch that makes it answer nothing at all.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};

use super::certs::{SecretVolume, TestCa, Usage};
use crate::sync::lock;

/// The path of the Leases of every namespace: `/apis/coordination.k8s.io/v1/namespaces/`.
const LEASES_PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// One request as the double saw it.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// `GET`, `POST` or `PUT`.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The bearer token it carried.
    pub token: String,
    /// The status code it was answered with; 0 when it was not answered (silent).
    pub status: u16,
}

/// What the double holds and how it behaves; tests change it at will.
pub struct ApiState {
    /// Bearer tokens accepted.
    pub tokens: Vec<String>,
    /// Verbs on leases the service account is granted (`get`, `create`, `update`).
    pub verbs: Vec<String>,
    /// The Leases, by namespace and name, as stored JSON objects.
    pub leases: BTreeMap<(String, String), Value>,
    /// Every Lease spec stored, in order, with when.
    pub writes: Vec<(Instant, Value)>,
    /// Every request answered.
    pub requests: Vec<ApiRequest>,
    /// While true, requests are read (and recorded with status 0) and never answered.
    pub silent: bool,
    /// Runs before a 401 is sent (a test rotates the token file here).
    pub on_unauthorized: Option<Box<dyn FnMut() + Send>>,
    next_version: u64,
    /// Set when the server is dropped: it accepts no more connections, and a silent
    /// connection ends.
    stopped: bool,
}

impl ApiState {
    /// The holder of Lease `namespace/name` now, if it exists.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        let lease = self
            .leases
            .get(&(namespace.to_string(), name.to_string()))?;
        Some(
            lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }

    /// The holders written, in order, each once per run of writes by the same holder.
    pub fn holder_changes(&self) -> Vec<String> {
        let mut holders: Vec<String> = Vec::new();
        for (_, spec) in &self.writes {
            let holder = spec["holderIdentity"].as_str().unwrap_or("").to_string();
            if holders.last() != Some(&holder) {
                holders.push(holder);
            }
        }
        holders
    }
}

/// The running double.
pub struct FakeApiServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed its certificate (the service account's `ca.crt`).
    pub ca: TestCa,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1, accepting `token` and granting get, create and
    /// update on leases.
    pub fn start(token: &str) -> FakeApiServer {
        let ca = TestCa::new("kubernetes CA");
        let issued = ca.issue(&["127.0.0.1", "kubernetes.default.svc"], Usage::Server);
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("server key");
        let tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server TLS");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(ApiState {
            tokens: vec![token.to_string()],
            verbs: ["get", "create", "update"].map(String::from).to_vec(),
            leases: BTreeMap::new(),
            writes: Vec::new(),
            requests: Vec::new(),
            silent: false,
            on_unauthorized: None,
            next_version: 0,
            stopped: false,
        }));
        let (tls, shared) = (Arc::new(tls), Arc::clone(&state));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if lock(&shared).stopped {
                    return;
                }
                let (tls, state) = (Arc::clone(&tls), Arc::clone(&shared));
                std::thread::spawn(move || serve_connection(stream, tls, &state));
            }
        });
        FakeApiServer { port, ca, state }
    }

    /// Its state, locked.
    pub fn state(&self) -> MutexGuard<'_, ApiState> {
        lock(&self.state)
    }
}

impl Drop for FakeApiServer {
    /// Stops it: the accept loop, woken by one more connection, sees `stopped` and closes the
    /// listener.
    fn drop(&mut self) {
        self.state().stopped = true;
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers the requests of one connection until the client closes it.
fn serve_connection(stream: TcpStream, tls: Arc<ServerConfig>, state: &Mutex<ApiState>) {
    let Ok(connection) = ServerConnection::new(tls) else {
        return;
    };
    let mut reader = BufReader::new(StreamOwned::new(connection, stream));
    while let Some((method, path, headers, body)) = read_request(&mut reader) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let (status, answer) = {
            let mut state = lock(state);
            let (status, answer) = if state.silent {
                (0, Value::Null)
            } else {
                state.answer(&method, &path, &token, &body)
            };
            state.requests.push(ApiRequest {
                method,
                path,
                token,
                status,
            });
            (status, answer)
        };
        if status == 0 {
            while {
                let state = lock(state);
                state.silent && !state.stopped
            } {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reason(status),
            text.len()
        );
        let stream = reader.get_mut();
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(text.as_bytes()).is_err()
        {
            return;
        }
        let _ = stream.flush();
    }
}

/// One request: method, path, lower-cased headers, body; `None` at the end of the connection.
type Request = (String, String, BTreeMap<String, String>, String);

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|n| *n > 0)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((
        method,
        path,
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Bad Request",
    }
}

/// The answer for a Lease that does not exist.
fn not_found(name: &str) -> (u16, Value) {
    let message = format!("leases.coordination.k8s.io \"{name}\" not found");
    status(404, "NotFound", message)
}

/// A Kubernetes `Status` body.
fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": reason, "message": message, "code": code});
    (code, body)
}

impl ApiState {
    /// The answer to one request.
    fn answer(&mut self, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
        if !self.tokens.iter().any(|t| t == token) {
            if let Some(hook) = &mut self.on_unauthorized {
                hook();
            }
            return status(401, "Unauthorized", "Unauthorized".into());
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let dry_run = query.split('&').any(|p| p == "dryRun=All");
        let Some((namespace, name)) = lease_path(path) else {
            return status(404, "NotFound", format!("no route {path}"));
        };
        let verb = match method {
            "GET" => "get",
            "POST" => "create",
            "PUT" => "update",
            _ => return status(405, "MethodNotAllowed", method.to_string()),
        };
        if !self.verbs.iter().any(|v| v == verb) {
            let message = format!(
                "leases.coordination.k8s.io \"{}\" is forbidden: User \"system:serviceaccount:{namespace}:director\" cannot {verb} resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"{namespace}\"",
                name.as_deref().unwrap_or("")
            );
            return status(403, "Forbidden", message);
        }
        match (verb, name) {
            ("get", Some(name)) => match self.leases.get(&(namespace, name.clone())) {
                Some(lease) => (200, lease.clone()),
                None => not_found(&name),
            },
            ("create", None) => self.create(namespace, body, dry_run),
            ("update", Some(name)) => self.update(namespace, name, body, dry_run),
            _ => status(405, "MethodNotAllowed", format!("{method} {path}")),
        }
    }

    fn create(&mut self, namespace: String, body: &str, dry_run: bool) -> (u16, Value) {
        let Ok(lease) = serde_json::from_str::<Value>(body) else {
            return status(400, "BadRequest", "not JSON".into());
        };
        let name = lease["metadata"]["name"].as_str().unwrap_or("").to_string();
        if self.leases.contains_key(&(namespace.clone(), name.clone())) {
            let message = format!("leases.coordination.k8s.io \"{name}\" already exists");
            return status(409, "AlreadyExists", message);
        }
        (201, self.store(namespace, name, lease, dry_run))
    }

    fn update(
        &mut self,
        namespace: String,
        name: String,
        body: &str,
        dry_run: bool,
    ) -> (u16, Value) {
        let Ok(lease) = serde_json::from_str::<Value>(body) else {
            return status(400, "BadRequest", "not JSON".into());
        };
        let Some(current) = self.leases.get(&(namespace.clone(), name.clone())) else {
            return not_found(&name);
        };
        let wanted = lease["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !wanted.is_empty() && current["metadata"]["resourceVersion"] != wanted {
            let message = format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again");
            return status(409, "Conflict", message);
        }
        (200, self.store(namespace, name, lease, dry_run))
    }

    /// Stores `lease` under a new resource version (unless `dry_run`) and returns it as stored.
    fn store(&mut self, namespace: String, name: String, mut lease: Value, dry_run: bool) -> Value {
        if dry_run {
            return lease;
        }
        self.next_version += 1;
        lease["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        lease["metadata"]["namespace"] = json!(namespace);
        self.writes.push((Instant::now(), lease["spec"].clone()));
        self.leases.insert((namespace, name), lease.clone());
        lease
    }
}

/// The namespace and, for one Lease, the name of a Leases path.
fn lease_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix(LEASES_PREFIX)?;
    let mut parts = rest.split('/');
    let namespace = parts.next()?.to_string();
    if parts.next()? != "leases" {
        return None;
    }
    let name = parts.next().map(String::from);
    parts.next().is_none().then_some((namespace, name))
}

/// The namespace in a [`ServiceAccount`] volume.
pub const SERVICE_ACCOUNT_NAMESPACE: &str = "games";

/// A pod's service account volume: `ca.crt` (the double's CA), `token` and `namespace`
/// ([`SERVICE_ACCOUNT_NAMESPACE`]),
/// published the way the kubelet publishes a projected volume (an atomic `..data` swap).
pub struct ServiceAccount {
    /// The volume's directory (SERVICE_ACCOUNT_DIR).
    pub dir: PathBuf,
    ca_pem: String,
    version: usize,
}

impl ServiceAccount {
    /// The volume in `dir` (created) for `api`, with `token`.
    pub fn new(dir: PathBuf, api: &FakeApiServer, token: &str) -> ServiceAccount {
        std::fs::create_dir_all(&dir).expect("service account directory");
        let mut account = ServiceAccount {
            dir,
            ca_pem: api.ca.pem(),
            version: 0,
        };
        account.publish_token(token);
        account
    }

    /// Publishes a new `token`, as the kubelet does when it rotates a projected token.
    pub fn publish_token(&mut self, token: &str) {
        let mut volume = SecretVolume {
            dir: &self.dir,
            version: self.version,
        };
        volume.publish(&[
            ("ca.crt", self.ca_pem.as_str()),
            ("token", token),
            ("namespace", SERVICE_ACCOUNT_NAMESPACE),
        ]);
        self.version = volume.version;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doubles::wait::wait_until;

    /// A dropped server closes its port (and its accept thread ends) instead of serving on.
    #[test]
    fn a_dropped_server_closes_its_port() {
        let port = FakeApiServer::start("token").port;
        wait_until(Duration::from_secs(10), "the port closed", || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }
}
