//! A match on its way through the pipeline, how it can end, and how its tickets go back to the
//! pool. Fetchers and workers both release matches through [`release_matches`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::services::Services;
use crate::openmatch::OpenMatchClient;
use crate::profiles::Profile;
use crate::retry::{retry, RetryPolicy};

/// A match waiting for a game server, with the profile (and so the region) that produced it.
#[derive(Debug)]
pub struct MatchJob {
    /// The profile whose FetchMatches returned the match.
    pub profile: Arc<Profile>,
    /// Open Match's match id.
    pub match_id: String,
    /// The match's distinct ticket ids.
    pub ticket_ids: Vec<String>,
    /// The id of the new backfill its game server is to acknowledge (`allocate_gameserver`).
    pub backfill_id: Option<String>,
    /// When the match came off the stream.
    pub received_at: Instant,
}

impl MatchJob {
    /// How much longer the match may wait for a worker before QUEUE_TIMEOUT releases it (zero
    /// once it has waited that long).
    pub(super) fn queue_time_left(&self, queue_timeout: Duration) -> Duration {
        (self.received_at + queue_timeout).saturating_duration_since(Instant::now())
    }
}

/// Why matches that waited past QUEUE_TIMEOUT are released, for the log.
pub(super) fn waited_past_queue_timeout(queue_timeout: Duration) -> String {
    format!("waited longer than QUEUE_TIMEOUT ({queue_timeout:?}) for an allocator worker")
}

/// How a match ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its tickets got a game server's connection.
    Assigned,
    /// Its tickets were returned to the pool.
    Released,
    /// Neither assignment nor release reached Open Match.
    Abandoned,
    /// It tops up a running game's backfill: nothing to do, Open Match assigns its tickets when
    /// the game server acknowledges the backfill.
    Backfill,
}

impl Outcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Released => "released",
            Outcome::Abandoned => "abandoned",
            Outcome::Backfill => "backfill",
        }
    }
}

/// After the shutdown deadline: `jobs` and every match still in `queues` go back to the pool in as
/// few ReleaseTickets calls as fit.
pub(super) fn release_queued(
    services: &Services,
    openmatch: &OpenMatchClient,
    policy: RetryPolicy,
    mut jobs: Vec<MatchJob>,
    queues: &[Receiver<MatchJob>],
) {
    for queued in queues.iter().flat_map(Receiver::try_iter) {
        services.metrics.dequeued();
        jobs.push(queued);
    }
    if !jobs.is_empty() {
        release_and_count(services, openmatch, policy, &jobs, "shutting down");
    }
}

/// The most ticket-id bytes one ReleaseTickets call carries: well under gRPC's 4 MiB limit on
/// a message.
const RELEASE_CALL_BYTES: usize = 1 << 20;

/// [`release_matches`] in as few calls as fit in a gRPC message each, each match counted under
/// its call's outcome.
pub(super) fn release_and_count(
    services: &Services,
    openmatch: &OpenMatchClient,
    policy: RetryPolicy,
    jobs: &[MatchJob],
    why: &str,
) {
    for group in release_groups(jobs, RELEASE_CALL_BYTES) {
        let outcome = release_matches(services, openmatch, policy, group, why);
        services
            .metrics
            .matches_finished
            .add(&[outcome.label()], group.len() as u64);
    }
}

/// `jobs` cut into consecutive groups whose ticket ids take at most `limit` bytes on the wire
/// (a match is never split; a match larger than `limit` is a group of its own).
fn release_groups(jobs: &[MatchJob], limit: usize) -> Vec<&[MatchJob]> {
    let size = |job: &MatchJob| -> usize {
        // Each id is a length-delimited string: its bytes and a few of tag and length.
        job.ticket_ids.iter().map(|id| id.len() + 4).sum()
    };
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, job) in jobs.iter().enumerate() {
        let job_bytes = size(job);
        if index > start && bytes + job_bytes > limit {
            groups.push(&jobs[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += job_bytes;
    }
    if start < jobs.len() {
        groups.push(&jobs[start..]);
    }
    groups
}

/// Returns the tickets of `jobs` to the pool in one ReleaseTickets call, retrying transient
/// failures as `policy` allows. The outcome is each match's: released, or abandoned to Open
/// Match's pending-release timeout when Open Match cannot be reached. Logs the match ids and
/// `why`.
pub(super) fn release_matches(
    services: &Services,
    openmatch: &OpenMatchClient,
    policy: RetryPolicy,
    jobs: &[MatchJob],
    why: &str,
) -> Outcome {
    let ticket_ids: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.ticket_ids.iter().cloned())
        .collect();
    let match_ids: Vec<&str> = jobs.iter().map(|j| j.match_id.as_str()).collect();
    match retry(
        policy,
        &services.shutdown,
        |timeout| openmatch.release(&ticket_ids, timeout),
        |_, _| {},
    ) {
        Ok(()) => {
            services
                .metrics
                .tickets_released
                .add(ticket_ids.len() as u64);
            log::warn!(
                "Released {} tickets of match(es) {match_ids:?} back to the pool: {why}",
                ticket_ids.len()
            );
            Outcome::Released
        }
        Err(error) => {
            log::error!(
                "ReleaseTickets for match(es) {match_ids:?} ({why}) failed: {error}; tickets {ticket_ids:?} wait for Open Match's pending-release timeout",
            );
            Outcome::Abandoned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::build_profiles;

    fn job(tickets: usize, id_len: usize) -> MatchJob {
        let config = crate::config::ProfileConfig {
            regions: vec!["r".into()],
            bands: vec![crate::config::Band { min: 0, max: 9 }],
            tag: "t".into(),
        };
        MatchJob {
            profile: Arc::new(build_profiles(&config).remove(0)),
            match_id: "m".into(),
            ticket_ids: vec!["x".repeat(id_len); tickets],
            backfill_id: None,
            received_at: Instant::now(),
        }
    }

    #[test]
    fn releases_are_cut_between_matches_to_fit_the_limit() {
        let jobs: Vec<MatchJob> = (0..10).map(|_| job(4, 96)).collect();
        let sizes = |limit| -> Vec<usize> {
            release_groups(&jobs, limit)
                .iter()
                .map(|g| g.len())
                .collect()
        };
        assert_eq!(sizes(1_000), [2, 2, 2, 2, 2], "400 bytes a match");
        assert_eq!(sizes(10_000), [10]);
        assert_eq!(
            sizes(100),
            [1; 10],
            "a match larger than the limit goes alone"
        );
        assert!(release_groups(&[], 100).is_empty());
    }
}
