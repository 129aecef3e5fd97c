//! The Kubernetes API, as much of it as leader election needs: the `coordination.k8s.io/v1` Lease
//! of one name, read, created and updated over HTTPS with the service account's token and CA.
//!
//! The token file is read for every request, so a projected token that the kubelet rotates is
//! picked up at once; a 401 is tried once more with the file read again.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::LeaderElectionConfig;
use crate::tls;

/// A Lease's spec, as leader election reads and writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it; empty when released.
    pub holder: String,
    /// How long a holder may go without renewing.
    pub duration_seconds: u64,
    /// When the holder took it (MicroTime).
    pub acquire_time: String,
    /// When the holder last renewed it (MicroTime).
    pub renew_time: String,
    /// How many times the holder changed.
    pub transitions: u64,
}

/// A Lease read from the API server: its record and the version a write must name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its spec.
    pub record: LeaseRecord,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// The API server answered with this status code and message.
    Status(u16, String),
    /// No answer: refused, reset, timed out, or not HTTP.
    Transport(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status(code, message) => write!(f, "HTTP {code}: {message}"),
            ApiError::Transport(why) => write!(f, "no answer: {why}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// The Lease operations leader election uses; the real API server or a test's.
pub trait LeaseApi {
    /// The Lease, or `None` when it does not exist.
    fn get(&self) -> Result<Option<Lease>, ApiError>;
    /// Creates the Lease with `record`; 409 when it exists.
    fn create(&self, record: &LeaseRecord) -> Result<Lease, ApiError>;
    /// Writes `record` over the Lease at `resource_version`; 409 when it changed since.
    fn update(&self, record: &LeaseRecord, resource_version: &str) -> Result<Lease, ApiError>;
}

/// The in-cluster API server, for one Lease.
pub struct KubeClient {
    agent: ureq::Agent,
    /// `https://host:port/apis/coordination.k8s.io/v1/namespaces/<namespace>/leases`.
    leases_url: String,
    /// `<leases_url>/<name>`.
    lease_url: String,
    name: String,
    namespace: String,
    token_file: PathBuf,
}

impl KubeClient {
    /// A client of the API server of `config`, every request bounded by `timeout`.
    pub fn new(config: &LeaderElectionConfig, timeout: Duration) -> KubeClient {
        let roots = tls::root_store(&config.api_ca);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .timeout(timeout)
            .user_agent(crate::USER_AGENT)
            .build();
        let leases_url = format!(
            "https://{}/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            config.api_server, config.namespace
        );
        KubeClient {
            agent,
            lease_url: format!("{leases_url}/{}", config.lease),
            leases_url,
            name: config.lease.clone(),
            namespace: config.namespace.clone(),
            token_file: config.token_file.clone(),
        }
    }

    /// The Lease as JSON for a create or an update.
    fn body(&self, record: &LeaseRecord, resource_version: Option<&str>) -> String {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        if let Some(version) = resource_version {
            metadata["resourceVersion"] = json!(version);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": record.holder,
                "leaseDurationSeconds": record.duration_seconds,
                "acquireTime": record.acquire_time,
                "renewTime": record.renew_time,
                "leaseTransitions": record.transitions,
            }
        })
        .to_string()
    }

    /// One request with the current token; a 401 is tried once more with the file read again.
    fn request(&self, method: &str, url: &str, body: Option<&str>) -> Result<String, ApiError> {
        let once = || {
            let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
                ApiError::Transport(format!("cannot read {}: {e}", self.token_file.display()))
            })?;
            let request = self
                .agent
                .request(method, url)
                .set("Authorization", &format!("Bearer {}", token.trim()))
                .set("Accept", "application/json");
            let response = match body {
                Some(body) => request
                    .set("Content-Type", "application/json")
                    .send_string(body),
                None => request.call(),
            };
            match response {
                Ok(response) => response
                    .into_string()
                    .map_err(|e| ApiError::Transport(e.to_string())),
                Err(ureq::Error::Status(code, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    Err(ApiError::Status(code, status_message(&text)))
                }
                Err(ureq::Error::Transport(e)) => Err(ApiError::Transport(e.to_string())),
            }
        };
        match once() {
            Err(ApiError::Status(401, _)) => once(),
            result => result,
        }
    }
}

impl KubeClient {
    /// Whether the service account may create the Lease: a dry-run POST of `record`, which the
    /// API server authorizes but does not store. A 409 (it exists) means it was authorized.
    pub fn may_create(&self, record: &LeaseRecord) -> Result<(), ApiError> {
        let url = format!("{}?dryRun=All", self.leases_url);
        authorized(self.request("POST", &url, Some(&self.body(record, None))))
    }

    /// Whether the service account may update `lease`: a dry-run PUT of it unchanged. A 409 (it
    /// changed meanwhile) means it was authorized.
    pub fn may_update(&self, lease: &Lease) -> Result<(), ApiError> {
        let url = format!("{}?dryRun=All", self.lease_url);
        let body = self.body(&lease.record, Some(&lease.resource_version));
        authorized(self.request("PUT", &url, Some(&body)))
    }
}

/// A dry run's answer: authorized unless it failed otherwise than with a conflict.
fn authorized(answer: Result<String, ApiError>) -> Result<(), ApiError> {
    match answer {
        Ok(_) | Err(ApiError::Status(409, _)) => Ok(()),
        Err(error) => Err(error),
    }
}

impl LeaseApi for KubeClient {
    fn get(&self) -> Result<Option<Lease>, ApiError> {
        match self.request("GET", &self.lease_url, None) {
            Ok(text) => parse_lease(&text).map(Some),
            Err(ApiError::Status(404, _)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn create(&self, record: &LeaseRecord) -> Result<Lease, ApiError> {
        let body = self.body(record, None);
        parse_lease(&self.request("POST", &self.leases_url, Some(&body))?)
    }

    fn update(&self, record: &LeaseRecord, resource_version: &str) -> Result<Lease, ApiError> {
        let body = self.body(record, Some(resource_version));
        parse_lease(&self.request("PUT", &self.lease_url, Some(&body))?)
    }
}

/// The message of a Kubernetes `Status` body, or the body itself.
fn status_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|status| status["message"].as_str().map(String::from))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// A Lease from its JSON.
pub fn parse_lease(text: &str) -> Result<Lease, ApiError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ApiError::Transport(format!("not a Lease: {e}")))?;
    let spec = &value["spec"];
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(Lease {
        record: LeaseRecord {
            holder: text_of(&spec["holderIdentity"]),
            duration_seconds: spec["leaseDurationSeconds"].as_u64().unwrap_or(0),
            acquire_time: text_of(&spec["acquireTime"]),
            renew_time: text_of(&spec["renewTime"]),
            transitions: spec["leaseTransitions"].as_u64().unwrap_or(0),
        },
        resource_version: text_of(&value["metadata"]["resourceVersion"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::apiserver::FakeApiServer;
    use crate::doubles::certs::TempDir;

    /// A client of `api` with the token file `token` in `dir`.
    fn client_of(api: &FakeApiServer, dir: &TempDir, token: &str) -> KubeClient {
        let token_file = dir.write("token", token);
        let ca = dir.write("ca.crt", api.ca.pem());
        let config = LeaderElectionConfig {
            lease: "director".into(),
            namespace: "games".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            api_server: format!("127.0.0.1:{}", api.port),
            api_ca: tls::load_ca(&ca).unwrap(),
            token_file,
        };
        KubeClient::new(&config, Duration::from_millis(500))
    }

    fn record(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            duration_seconds: 15,
            acquire_time: "2026-12-02T16:00:00.000000Z".into(),
            renew_time: "2026-12-02T16:00:00.000000Z".into(),
            transitions: 0,
        }
    }

    #[test]
    fn a_lease_is_created_read_and_updated_at_the_version_read() {
        let api = FakeApiServer::start("token");
        let dir = TempDir::new("kube");
        let client = client_of(&api, &dir, "token\n");
        assert_eq!(client.get(), Ok(None));
        client.may_create(&record("a")).unwrap();
        assert_eq!(client.get(), Ok(None), "a dry run stores nothing");
        let created = client.create(&record("a")).unwrap();
        assert_eq!(client.get(), Ok(Some(created.clone())));
        assert!(matches!(
            client.create(&record("b")),
            Err(ApiError::Status(409, _))
        ));
        client.may_update(&created).unwrap();
        let renewed = client
            .update(&record("a"), &created.resource_version)
            .unwrap();
        assert_ne!(renewed.resource_version, created.resource_version);
        let stale = client.update(&record("b"), &created.resource_version);
        assert!(matches!(stale, Err(ApiError::Status(409, m)) if m.contains("has been modified")));
        assert_eq!(
            api.state().holder("games", "director").as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_refused_token_is_read_again_and_the_request_tried_once_more() {
        let api = FakeApiServer::start("token-2");
        let dir = TempDir::new("kube");
        let client = client_of(&api, &dir, "token-1");
        let token_file = dir.path().join("token");
        api.state().on_unauthorized = Some(Box::new(move || {
            std::fs::write(&token_file, "token-2").unwrap();
        }));
        assert_eq!(client.get(), Ok(None));
        let seen: Vec<(u16, String)> = api
            .state()
            .requests
            .iter()
            .map(|r| (r.status, r.token.clone()))
            .collect();
        assert_eq!(seen, [(401, "token-1".into()), (404, "token-2".into())]);
    }

    #[test]
    fn a_silent_api_server_is_a_transport_error_after_the_deadline() {
        let api = FakeApiServer::start("token");
        let dir = TempDir::new("kube");
        let client = client_of(&api, &dir, "token");
        api.state().silent = true;
        assert!(matches!(client.get(), Err(ApiError::Transport(_))));
        api.state().silent = false;
        assert_eq!(client.get(), Ok(None));
    }

    #[test]
    fn a_lease_is_read_from_its_json_and_a_status_gives_its_message() {
        let lease = parse_lease(
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease",
                "metadata":{"name":"director","namespace":"games","resourceVersion":"42"},
                "spec":{"holderIdentity":"pod-a","leaseDurationSeconds":15,
                        "acquireTime":"2026-12-02T16:00:00.000000Z",
                        "renewTime":"2026-12-02T16:00:10.500000Z","leaseTransitions":3}}"#,
        )
        .unwrap();
        assert_eq!(lease.resource_version, "42");
        assert_eq!(lease.record.holder, "pod-a");
        assert_eq!(
            (lease.record.duration_seconds, lease.record.transitions),
            (15, 3)
        );
        assert_eq!(lease.record.renew_time, "2026-12-02T16:00:10.500000Z");
        let forbidden = r#"{"kind":"Status","status":"Failure","reason":"Forbidden","message":"leases.coordination.k8s.io \"director\" is forbidden: User cannot update","code":403}"#;
        assert!(status_message(forbidden).starts_with("leases.coordination.k8s.io"));
    }
}
