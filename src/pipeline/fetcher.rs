//! A fetcher: one profile's FetchMatches loop. It starts a call only when its region's queue has
//! room (backpressure before Open Match hands out matches), reads every stream to its end at once,
//! and queues the matches as room appears, releasing those that cannot start in time.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Sender};
use grpcio::RpcStatusCode;

use super::job::{release_and_count, waited_past_queue_timeout, MatchJob, Outcome};
use super::services::{FetcherSettings, Services};
use crate::circuit::Circuit;
use crate::health::Heartbeat;
use crate::openmatch::{FetchOutcome, OpenMatchClient};
use crate::profiles::Profile;
use crate::proto::messages::Match;
use crate::ratelimit::RateLimit;
use crate::retry::fetch_backoff;
use crate::rpc::{code_name, RpcError};

/// One profile's fetch loop.
pub(super) struct Fetcher {
    pub(super) profile: Arc<Profile>,
    /// Its region's queue.
    pub(super) queue: Sender<MatchJob>,
    /// Its region's circuit breaker: no FetchMatches while it is open.
    pub(super) circuit: Arc<Circuit>,
    /// Its region's ALLOCATE_RATE_LIMIT: no FetchMatches while the next turn is further away
    /// than QUEUE_TIMEOUT (a match fetched now could only be released).
    pub(super) rate_limit: Option<Arc<RateLimit>>,
    pub(super) services: Arc<Services>,
    pub(super) settings: FetcherSettings,
    pub(super) heartbeat: Arc<Heartbeat>,
}

/// How often a fetcher waiting to start its next FetchMatches looks again for room in a full
/// queue, or at its region's open circuit.
const ROOM_POLL: Duration = Duration::from_millis(10);

impl Fetcher {
    /// Fetches until shutdown is requested.
    pub(super) fn run(self) {
        let mut failures = 0;
        while self.wait_for_room() {
            let (_, openmatch) = self.services.openmatch.current();
            self.heartbeat.progress();
            let mut backlog = VecDeque::new();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                openmatch.fetch_matches(
                    &self.profile.match_profile,
                    self.settings.fetch_timeout,
                    &self.services.shutdown,
                    |m| self.take(m, &mut backlog),
                )
            }))
            .unwrap_or_else(|_| FetchOutcome {
                received: 0,
                error: Some(RpcError::new(
                    RpcStatusCode::INTERNAL,
                    "bug: the fetcher panicked; matches already received are still handled",
                )),
            });
            self.drain(backlog, &openmatch);
            self.record(&outcome);
            let pause = match outcome.error {
                None => {
                    failures = 0;
                    if outcome.received > 0 {
                        log::info!(
                            "Generated {} matches for profile {}",
                            outcome.received,
                            self.profile.name
                        );
                    }
                    self.settings.interval
                }
                Some(error) => {
                    failures += 1;
                    let pause = fetch_backoff(self.settings.interval, failures);
                    log::warn!(
                        "FetchMatches for profile {} failed after {} matches: {error}; next try in {:.1}s",
                        self.profile.name,
                        outcome.received,
                        pause.as_secs_f64()
                    );
                    pause
                }
            };
            let stop = self.heartbeat.waiting(|| {
                select! {
                    recv(self.services.shutdown.requested_channel()) -> _ => true,
                    default(pause) => false,
                }
            });
            if stop {
                break;
            }
        }
        self.heartbeat.exited();
    }

    /// Backpressure, applied before a FetchMatches call rather than during one: every match a
    /// stream carries is already pending in Open Match, so no stream starts while the queue is
    /// full, or while the region's circuit is open (its matches would only go back to the pool
    /// at once; the fetch resumes when the circuit's probe is due). With leader election, no
    /// stream starts while this replica is a standby. Returns `false` once shutdown is requested.
    fn wait_for_room(&self) -> bool {
        self.heartbeat.waiting(|| loop {
            if self.services.shutdown.is_requested() {
                return false;
            }
            let turn_in_time = self
                .rate_limit
                .as_ref()
                .is_none_or(|limit| limit.wait_now() < self.settings.queue_timeout);
            let room = !self.queue.is_full() && self.circuit.wants_matches() && turn_in_time;
            if room && self.services.leadership.may_fetch() {
                return true;
            }
            select! {
                recv(self.services.shutdown.requested_channel()) -> _ => return false,
                default(ROOM_POLL) => {}
            }
        })
    }

    fn record(&self, outcome: &FetchOutcome) {
        let name = self.profile.name.as_str();
        let result = match &outcome.error {
            None => Ok(()),
            Some(error) => {
                let code = code_name(error.code);
                self.services.metrics.fetch_errors.inc(&[name, &code]);
                Err(error.to_string())
            }
        };
        self.services.health.fetch_finished(name, result);
    }

    /// Takes a match as it comes off the stream: into the queue if it has room, else into the
    /// stream's backlog. Never blocks, so the stream is always read to its end at once.
    fn take(&self, m: Match, backlog: &mut VecDeque<MatchJob>) {
        let ticket_ids = distinct_ticket_ids(&m);
        if ticket_ids.is_empty() {
            log::warn!(
                "Skipping match {} of profile {}: it has no tickets",
                m.get_match_id(),
                self.profile.name
            );
            self.services.metrics.empty_matches.add(1);
            return;
        }
        self.heartbeat.progress();
        self.services
            .metrics
            .matches_fetched
            .inc(&[self.profile.name.as_str()]);
        if m.has_backfill() && !m.get_allocate_gameserver() {
            return self.leave_to_backfill(&m, ticket_ids.len());
        }
        backlog.push_back(MatchJob {
            profile: Arc::clone(&self.profile),
            match_id: m.get_match_id().to_string(),
            ticket_ids,
            backfill_id: m
                .has_backfill()
                .then(|| m.get_backfill().get_id().to_string()),
            received_at: Instant::now(),
        });
        while let Some(job) = backlog.pop_front() {
            match self.queue.try_send(job) {
                Ok(()) => self.services.metrics.queued(),
                Err(refused) => {
                    backlog.push_front(refused.into_inner());
                    break;
                }
            }
        }
    }

    /// A match that tops up a running game's backfill (`allocate_gameserver = false`): its game
    /// server is already running, so there is nothing to allocate, assign or release; Open Match
    /// assigns the tickets when the game server next acknowledges the backfill.
    fn leave_to_backfill(&self, m: &Match, tickets: usize) {
        log::debug!(
            "Match {} tops up backfill {} of a running game server: nothing to allocate; Open Match assigns its {tickets} tickets when the game server acknowledges the backfill",
            m.get_match_id(),
            m.get_backfill().get_id()
        );
        self.services
            .metrics
            .matches_finished
            .inc(&[Outcome::Backfill.label()]);
    }

    /// Queues the backlog a stream left as room appears. Matches that cannot be queued before
    /// their QUEUE_TIMEOUT passes or shutdown is forced, or that no worker is left to take, are
    /// released together: the expired ones as soon as the queue takes a match again, or when
    /// the backlog is through (matches of one stream expire within moments of each other).
    fn drain(&self, backlog: VecDeque<MatchJob>, openmatch: &OpenMatchClient) {
        let mut expired = Vec::new();
        let mut orphaned = Vec::new();
        for job in backlog {
            let wait = job.queue_time_left(self.settings.queue_timeout);
            if wait.is_zero() || self.services.shutdown.is_forced() {
                expired.push(job);
                continue;
            }
            let queued = self.heartbeat.waiting(|| {
                select! {
                    send(self.queue, job) -> sent => match sent {
                        Ok(()) => true,
                        Err(lost) => {
                            orphaned.push(lost.into_inner());
                            false
                        }
                    },
                    recv(self.services.shutdown.forced_channel()) -> _ => {
                        expired.push(job);
                        false
                    }
                    default(wait) => {
                        expired.push(job);
                        false
                    }
                }
            });
            if queued {
                self.services.metrics.queued();
                self.release_expired(&mut expired, openmatch);
            }
        }
        self.release_expired(&mut expired, openmatch);
        if !orphaned.is_empty() {
            release_and_count(
                &self.services,
                openmatch,
                self.settings.release,
                &orphaned,
                "no allocator worker is left to take them",
            );
        }
    }

    /// Releases the matches in `expired` (if any) in one call and counts them.
    fn release_expired(&self, expired: &mut Vec<MatchJob>, openmatch: &OpenMatchClient) {
        if expired.is_empty() {
            return;
        }
        let why = if self.services.shutdown.is_forced() {
            "shutting down".to_string()
        } else {
            format!(
                "they {}",
                waited_past_queue_timeout(self.settings.queue_timeout)
            )
        };
        release_and_count(
            &self.services,
            openmatch,
            self.settings.release,
            expired,
            &why,
        );
        expired.clear();
    }
}

/// The ticket ids of a match, first occurrence kept (Open Match rejects duplicates).
pub fn distinct_ticket_ids(m: &Match) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(m.get_tickets().len());
    for ticket in m.get_tickets() {
        if !ids.iter().any(|id| id == ticket.get_id()) {
            ids.push(ticket.get_id().to_string());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::doubles::certs::{TempDir, TestCa, Usage};
    use crate::doubles::openmatch::{FakeOpenMatch, TicketStatus};
    use crate::pipeline::{FetcherSettings, Services, Totals};
    use crate::profiles::build_profiles;
    use crate::shutdown::Shutdown;

    /// Polls `condition` until it holds; panics after 20 s naming `what`.
    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fetcher for the one profile of a one-region, one-band configuration against `om`.
    /// Its queue has no receiver: every worker is gone.
    fn fetcher_without_workers(
        om: &FakeOpenMatch,
        dir: &TempDir,
        shutdown: &Arc<Shutdown>,
    ) -> Fetcher {
        let ca = TestCa::new("agones CA");
        let client = ca.issue(&["director"], Usage::Client);
        let vars = [
            ("OPENMATCH_BACKEND_ADDR", "127.0.0.1".to_string()),
            ("OPENMATCH_BACKEND_PORT", om.port.to_string()),
            ("REGIONS", "us-east-1".to_string()),
            ("RANGES", "0-49".to_string()),
            (
                "AGONES_CA_CERT",
                dir.write("ca.crt", ca.pem()).display().to_string(),
            ),
            (
                "AGONES_CLIENT_CERT",
                dir.write("tls.crt", client.cert_pem).display().to_string(),
            ),
            (
                "AGONES_CLIENT_KEY",
                dir.write("tls.key", client.key_pem).display().to_string(),
            ),
        ];
        let config = Config::from_lookup(&|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.clone())
        })
        .expect("valid configuration");
        let env = Arc::new(grpcio::EnvBuilder::new().build());
        let services = Arc::new(Services::new(&config, shutdown, &env));
        let (queue, workers) = crossbeam_channel::bounded(4);
        drop(workers);
        Fetcher {
            profile: Arc::new(build_profiles(&config.profiles).remove(0)),
            queue,
            circuit: Arc::default(),
            rate_limit: None,
            heartbeat: services.health.register("fetch", Duration::from_secs(30)),
            services,
            settings: FetcherSettings {
                interval: Duration::from_millis(50),
                fetch_timeout: Duration::from_secs(5),
                ..FetcherSettings::of(&config.timing)
            },
        }
    }

    #[test]
    fn with_every_worker_gone_fetched_matches_are_released_not_lost() {
        let om = FakeOpenMatch::start();
        let players = om.add_players(&["us-east-1"], "us-east-1", 10.0, 8);
        let dir = TempDir::new("no-workers");
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let fetcher = fetcher_without_workers(&om, &dir, &shutdown);
        let services = Arc::clone(&fetcher.services);
        let running = std::thread::spawn(move || fetcher.run());
        wait_until("every player released", || {
            let released = om.state().released_ids();
            players.iter().all(|id| released.contains(id))
        });
        shutdown.request();
        running.join().expect("the fetcher ends");
        let totals = Totals::of(&services.metrics);
        assert!(totals.received >= 2, "{totals:?}");
        assert_eq!(totals.released, totals.received, "{totals:?}");
        assert!(totals.adds_up(), "{totals:?}");
        let om = om.state();
        assert_eq!(om.count(|s| *s == TicketStatus::Pending), 0);
        assert_eq!(om.assigned(), 0);
    }
}
