//! `director check` with leader election: the API server reached, the Lease read, and dry runs of
//! its create and update.

use super::{Report, STEP_TIMEOUT};
use crate::config::LeaderElectionConfig;
use crate::kube::{ApiError, KubeClient, LeaseApi, LeaseRecord};

impl Report {
    /// Leader election: the API server reached, the Lease read, and dry runs of its create and
    /// update, each failure naming the setting or the RBAC rule to fix.
    pub(super) fn lease_access(&mut self, election: &LeaderElectionConfig) {
        self.line(&format!(
            "Leader election: Lease {}/{} as {:?}, API server https://{}:",
            election.namespace, election.lease, election.identity, election.api_server
        ));
        let client = KubeClient::new(election, STEP_TIMEOUT);
        let explain = |verb: &str, error: ApiError| lease_problem(election, verb, error);
        let lease = match client.get() {
            Ok(lease) => lease,
            Err(error) => return self.fail(&explain("get", error)),
        };
        match &lease {
            None => self.ok("may read the Lease (it does not exist yet)"),
            Some(lease) if lease.record.holder.is_empty() => {
                self.ok("may read the Lease (no holder)")
            }
            Some(lease) => self.ok(&format!(
                "may read the Lease (held by {:?}, renewed {})",
                lease.record.holder, lease.record.renew_time
            )),
        }
        let record = LeaseRecord {
            holder: election.identity.clone(),
            duration_seconds: election.lease_duration.as_secs(),
            ..LeaseRecord::default()
        };
        match client.may_create(&record) {
            Ok(()) => self.ok("may create the Lease (dry run)"),
            Err(error) => self.fail(&explain("create", error)),
        }
        if let Some(lease) = &lease {
            match client.may_update(lease) {
                Ok(()) => self.ok("may update the Lease (dry run)"),
                Err(error) => self.fail(&explain("update", error)),
            }
        }
    }
}

/// What to fix when `verb` on the Lease failed with `error`.
fn lease_problem(election: &LeaderElectionConfig, verb: &str, error: ApiError) -> String {
    match error {
        ApiError::Status(401, message) => format!(
            "the API server rejects the token in SERVICE_ACCOUNT_DIR ({}): {message}",
            election.token_file.display()
        ),
        ApiError::Status(403, message) => format!(
            "{verb} is forbidden: {message}. The service account needs a Role with apiGroups [coordination.k8s.io], resources [leases], verbs [get, create, update] in namespace {:?} (LEADER_ELECTION_NAMESPACE), bound to it by a RoleBinding",
            election.namespace
        ),
        ApiError::Status(code, message) => {
            format!("{verb} the Lease: the API server answered {code}: {message}")
        }
        ApiError::Transport(why) => format!(
            "cannot reach the API server at {} (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT), or it is not trusted by the ca.crt of SERVICE_ACCOUNT_DIR: {why}",
            election.api_server
        ),
    }
}
