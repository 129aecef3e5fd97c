//! Leader election on a Kubernetes Lease (LEADER_ELECTION_LEASE), as client-go's `leaderelection`
//! with a LeaseLock does it: only the leader's fetchers call FetchMatches; a standby is fully warm
//! and takes the Lease over when the leader stops renewing it.
//!
//! Safety: a Lease held by another replica counts as valid until `leaseDurationSeconds` after this
//! replica *saw* it change (its own clock, not the holder's `renewTime`), and a leader that has
//! not renewed for LEASE_RENEW_DEADLINE stops starting FetchMatches at once. So two replicas never
//! fetch at the same time, as long as their clocks run at about the same rate (the gap between
//! LEASE_DURATION and LEASE_RENEW_DEADLINE is the margin).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Sender};

use crate::config::LeaderElectionConfig;
use crate::kube::{ApiError, KubeClient, Lease, LeaseApi, LeaseRecord};
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::x509::micro_time;

/// Whether this replica may start FetchMatches now.
#[derive(Debug)]
pub struct Leadership {
    /// LEASE_RENEW_DEADLINE; `None`: no election, always fetch.
    renew_deadline: Option<Duration>,
    /// When this replica last wrote the Lease as its holder; `None` while it is a standby.
    renewed_at: Mutex<Option<Instant>>,
}

impl Leadership {
    /// With LEASE_RENEW_DEADLINE when elections are on (`None`: every replica always fetches).
    pub fn new(renew_deadline: Option<Duration>) -> Leadership {
        Leadership {
            renew_deadline,
            renewed_at: Mutex::new(None),
        }
    }

    /// Whether FetchMatches may start now: no election, or this replica holds the Lease and
    /// renewed it less than LEASE_RENEW_DEADLINE ago.
    pub fn may_fetch(&self) -> bool {
        self.renewed_in_time(Instant::now())
    }

    /// Whether, at `now`, there is no election or this replica renewed the Lease less than
    /// LEASE_RENEW_DEADLINE before.
    fn renewed_in_time(&self, now: Instant) -> bool {
        let Some(deadline) = self.renew_deadline else {
            return true;
        };
        lock(&self.renewed_at).is_some_and(|at| now.saturating_duration_since(at) < deadline)
    }

    /// Whether this replica counts itself the leader (it may be past its renew deadline).
    pub fn is_leader(&self) -> bool {
        lock(&self.renewed_at).is_some()
    }

    fn renewed(&self, at: Instant) {
        *lock(&self.renewed_at) = Some(at);
    }

    fn stepped_down(&self) {
        *lock(&self.renewed_at) = None;
    }
}

/// One replica's side of the election, on `api`, timed by `clock` (`Instant::now`, or a test's).
pub struct Elector<A: LeaseApi, C: Fn() -> Instant> {
    api: A,
    clock: C,
    identity: String,
    lease_duration: Duration,
    /// The Lease as last seen, and when this replica saw it change.
    observed: Option<(Lease, Instant)>,
}

impl<A: LeaseApi, C: Fn() -> Instant> Elector<A, C> {
    /// `identity`'s elector on `api`, writing `lease_duration` into the Lease.
    pub fn new(api: A, clock: C, identity: String, lease_duration: Duration) -> Elector<A, C> {
        Elector {
            api,
            clock,
            identity,
            lease_duration,
            observed: None,
        }
    }

    /// One try to take the Lease or renew it, `wall` being the time written into it: `Ok(true)`
    /// when this replica holds it now, `Ok(false)` when another replica holds it (or wrote
    /// first). A change is dated when its read returned, never earlier than it can have happened.
    pub fn try_acquire_or_renew(&mut self, wall: SystemTime) -> Result<bool, ApiError> {
        let mut record = LeaseRecord {
            holder: self.identity.clone(),
            duration_seconds: self.lease_duration.as_secs().max(1),
            acquire_time: micro_time(wall),
            renew_time: micro_time(wall),
            transitions: 0,
        };
        let Some(lease) = self.api.get()? else {
            return self.written(self.api.create(&record));
        };
        let now = (self.clock)();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen.resource_version != lease.resource_version);
        if changed {
            self.observed = Some((lease.clone(), now));
        }
        let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let valid_until = seen_at + Duration::from_secs(lease.record.duration_seconds);
        let holder = &lease.record.holder;
        if !holder.is_empty() && *holder != self.identity && now < valid_until {
            return Ok(false);
        }
        if *holder == self.identity {
            record.acquire_time = lease.record.acquire_time.clone();
            record.transitions = lease.record.transitions;
        } else {
            record.transitions = lease.record.transitions + 1;
        }
        self.written(self.api.update(&record, &lease.resource_version))
    }

    /// The result of a write: held on success, not held on a conflict (another replica wrote
    /// first).
    fn written(&mut self, result: Result<Lease, ApiError>) -> Result<bool, ApiError> {
        match result {
            Ok(lease) => {
                self.observed = Some((lease, (self.clock)()));
                Ok(true)
            }
            Err(ApiError::Status(409, _)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The holder of the Lease as last seen (empty when released), if it was seen at all.
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .map(|(lease, _)| lease.record.holder.as_str())
    }

    /// Gives the Lease up (holder cleared, a one-second duration) if this replica holds it, so
    /// that a standby takes over at once.
    pub fn release(&mut self, wall: SystemTime) -> Result<(), ApiError> {
        let Some((lease, _)) = &self.observed else {
            return Ok(());
        };
        if lease.record.holder != self.identity {
            return Ok(());
        }
        let record = LeaseRecord {
            holder: String::new(),
            duration_seconds: 1,
            acquire_time: micro_time(wall),
            renew_time: micro_time(wall),
            transitions: lease.record.transitions,
        };
        self.api
            .update(&record, &lease.resource_version)
            .map(|_| ())
    }
}

/// The running election: stop it to give the Lease up.
pub struct Election {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Election {
    /// Ends the election; the leader gives the Lease up.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Starts the election thread of `config`: every LEASE_RETRY_PERIOD it takes or renews the Lease,
/// and tells `leadership`; until [`Election::stop`], then it gives the Lease up.
pub fn start(
    config: &LeaderElectionConfig,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
) -> std::io::Result<Election> {
    let client = KubeClient::new(config, config.retry_period);
    let mut elector = Elector::new(
        client,
        Instant::now,
        config.identity.clone(),
        config.lease_duration,
    );
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let (retry_period, identity) = (config.retry_period, config.identity.clone());
    let lease = format!("Lease {}/{}", config.namespace, config.lease);
    metrics.leader.set(&[], 0);
    let mut reporter = Reporter {
        leadership,
        metrics,
        what: format!("{:?} on {lease}", config.identity),
        last_failure: None,
    };
    let thread = std::thread::Builder::new()
        .name("leader-election".into())
        .spawn(move || {
            let mut standing_by_for = String::new();
            loop {
                // A renewal counts from before its request: the renew deadline is never late.
                let started = Instant::now();
                let held = elector.try_acquire_or_renew(SystemTime::now());
                reporter.step(held, started);
                let holder = elector.holder().unwrap_or_default();
                let another = !holder.is_empty() && holder != identity;
                if another && !reporter.leadership.is_leader() && holder != standing_by_for {
                    log::info!("{lease} is held by {holder:?}: this replica is a warm standby, and takes over if the Lease is not renewed");
                    standing_by_for = holder.to_string();
                }
                select! {
                    recv(stopped) -> _ => break,
                    default(retry_period) => {}
                }
            }
            if reporter.leadership.is_leader() {
                reporter.leadership.stepped_down();
                reporter.metrics.leader.set(&[], 0);
                match elector.release(SystemTime::now()) {
                    Ok(()) => log::info!("Gave up the {lease}: a standby can take over at once"),
                    Err(error) => log::warn!("Could not give up the {lease}: {error}; a standby takes over when it expires"),
                }
            }
        })?;
    Ok(Election { stop, thread })
}

/// The same failure again is logged at most this often (a long API server outage is a few lines,
/// not one every retry period).
const REPEATED_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the tries mean for the rest of the Director (`leadership`, `metrics`) and for the log.
struct Reporter {
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
    /// This replica and its Lease, for the log.
    what: String,
    /// The last failure logged, and when.
    last_failure: Option<(String, Instant)>,
}

impl Reporter {
    /// What one try, started at `now`, means for this replica: leader, standby, or a leader that
    /// has to step down.
    fn step(&mut self, held: Result<bool, ApiError>, now: Instant) {
        let was_leader = self.leadership.is_leader();
        let error = match held {
            Ok(held) => {
                if self.last_failure.take().is_some() {
                    log::info!(
                        "Leader election ({}): the API server answers again",
                        self.what
                    );
                }
                match (held, was_leader) {
                    (true, _) => self.renewed(now, was_leader),
                    (false, true) => self.stop_leading("another replica holds the Lease"),
                    (false, false) => {}
                }
                return;
            }
            Err(error) => error,
        };
        self.failed(&error, now);
        if was_leader && !self.leadership.renewed_in_time(now) {
            let why = format!(
                "the Lease was not renewed for LEASE_RENEW_DEADLINE ({:?})",
                self.leadership.renew_deadline.unwrap_or_default()
            );
            self.stop_leading(&why);
        }
    }

    fn renewed(&self, now: Instant, was_leader: bool) {
        self.leadership.renewed(now);
        if !was_leader {
            self.metrics.leader.set(&[], 1);
            self.metrics.leader_transitions.add(1);
            log::info!(
                "This replica is now the leader ({}): fetching matches",
                self.what
            );
        }
    }

    /// Logs `error`, unless the same one was logged less than a minute ago.
    fn failed(&mut self, error: &ApiError, now: Instant) {
        let text = error.to_string();
        let repeated = self
            .last_failure
            .as_ref()
            .is_some_and(|(last, at)| *last == text && now - *at < REPEATED_FAILURE_LOG_INTERVAL);
        if repeated {
            return;
        }
        let what = &self.what;
        match error {
            ApiError::Status(403, message) => log::error!(
                "Leader election ({what}) is forbidden: {message}; the service account needs get, create and update on leases (coordination.k8s.io) in that namespace"
            ),
            error => log::warn!(
                "Leader election ({what}): {error}; trying again every LEASE_RETRY_PERIOD (the same failure is logged once a minute)"
            ),
        }
        self.last_failure = Some((text, now));
    }

    fn stop_leading(&self, why: &str) {
        self.leadership.stepped_down();
        self.metrics.leader.set(&[], 0);
        self.metrics.leader_transitions.add(1);
        log::warn!(
            "This replica is no longer the leader ({}): {why}; it stops fetching and keeps trying",
            self.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// An API server holding one Lease in memory, with resource versions and conflicts, and the
    /// replicas' clock, which only the test and a read (taking `read_millis`) move.
    struct FakeApi {
        lease: RefCell<Option<Lease>>,
        versions: RefCell<u64>,
        down: RefCell<bool>,
        start: Instant,
        now: Cell<Instant>,
        read_millis: Cell<u64>,
    }

    impl FakeApi {
        fn new() -> FakeApi {
            let start = Instant::now();
            FakeApi {
                lease: RefCell::new(None),
                versions: RefCell::new(0),
                down: RefCell::new(false),
                start,
                now: Cell::new(start),
                read_millis: Cell::new(0),
            }
        }

        /// Sets the clock to `millis` after its start, and returns that instant.
        fn at(&self, millis: u64) -> Instant {
            self.now.set(self.start + Duration::from_millis(millis));
            self.now.get()
        }

        fn store(&self, record: &LeaseRecord) -> Lease {
            *self.versions.borrow_mut() += 1;
            let lease = Lease {
                record: record.clone(),
                resource_version: self.versions.borrow().to_string(),
            };
            *self.lease.borrow_mut() = Some(lease.clone());
            lease
        }

        fn holder(&self) -> String {
            self.lease
                .borrow()
                .as_ref()
                .map(|l| l.record.holder.clone())
                .unwrap_or_default()
        }
    }

    impl LeaseApi for &FakeApi {
        fn get(&self) -> Result<Option<Lease>, ApiError> {
            let read = Duration::from_millis(self.read_millis.get());
            self.now.set(self.now.get() + read);
            if *self.down.borrow() {
                return Err(ApiError::Transport("connection refused".into()));
            }
            Ok(self.lease.borrow().clone())
        }

        fn create(&self, record: &LeaseRecord) -> Result<Lease, ApiError> {
            if self.lease.borrow().is_some() {
                return Err(ApiError::Status(409, "already exists".into()));
            }
            Ok(self.store(record))
        }

        fn update(&self, record: &LeaseRecord, version: &str) -> Result<Lease, ApiError> {
            let current = self
                .lease
                .borrow()
                .as_ref()
                .map(|l| l.resource_version.clone());
            if current.as_deref() != Some(version) {
                return Err(ApiError::Status(409, "the object has been modified".into()));
            }
            Ok(self.store(record))
        }
    }

    const DURATION: Duration = Duration::from_secs(15);

    fn elector<'a>(api: &'a FakeApi, id: &str) -> Elector<&'a FakeApi, impl Fn() -> Instant + 'a> {
        Elector::new(api, move || api.now.get(), id.to_string(), DURATION)
    }

    /// Replicas `a` and `b` on `api` at `wall`, after `a` created the Lease and `b` saw it held.
    fn a_leads_and_b_stands_by<'a>(
        api: &'a FakeApi,
        wall: SystemTime,
    ) -> (
        Elector<&'a FakeApi, impl Fn() -> Instant + 'a>,
        Elector<&'a FakeApi, impl Fn() -> Instant + 'a>,
    ) {
        let (mut a, mut b) = (elector(api, "a"), elector(api, "b"));
        assert_eq!(a.try_acquire_or_renew(wall), Ok(true));
        assert_eq!(api.holder(), "a");
        assert_eq!(b.try_acquire_or_renew(wall), Ok(false));
        (a, b)
    }

    #[test]
    fn the_first_replica_creates_the_lease_and_the_second_waits_until_it_expires() {
        let api = FakeApi::new();
        let wall = SystemTime::now();
        let (mut a, mut b) = a_leads_and_b_stands_by(&api, wall);
        api.at(2_000);
        assert_eq!(a.try_acquire_or_renew(wall), Ok(true), "a renews");
        assert_eq!(b.try_acquire_or_renew(wall), Ok(false));
        // a dies; b counts the lease valid for 15 s from when it saw the last change.
        api.at(16_999);
        assert_eq!(b.try_acquire_or_renew(wall), Ok(false));
        api.at(17_000);
        assert_eq!(b.try_acquire_or_renew(wall), Ok(true));
        let lease = api.lease.borrow().clone().unwrap();
        assert_eq!(lease.record.holder, "b");
        assert_eq!(lease.record.transitions, 1, "the holder changed once");
        assert_eq!(lease.record.duration_seconds, 15);
    }

    #[test]
    fn a_renewal_seen_late_is_dated_when_it_was_seen() {
        let api = FakeApi::new();
        let wall = SystemTime::now();
        let (mut a, mut b) = a_leads_and_b_stands_by(&api, wall);
        api.at(2_000);
        assert_eq!(a.try_acquire_or_renew(wall), Ok(true));
        // b's next read starts 1 s after a's renewal and takes 0.9 s: the renewal is dated when
        // the read returned, and the Lease is valid 15 s from then.
        api.at(3_000);
        api.read_millis.set(900);
        assert_eq!(b.try_acquire_or_renew(wall), Ok(false));
        api.read_millis.set(0);
        api.at(18_899);
        assert_eq!(b.try_acquire_or_renew(wall), Ok(false));
        api.at(18_900);
        assert_eq!(b.try_acquire_or_renew(wall), Ok(true));
    }

    #[test]
    fn a_renewal_keeps_the_acquire_time_and_the_transitions() {
        let api = FakeApi::new();
        let mut a = elector(&api, "a");
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_227_200);
        assert_eq!(a.try_acquire_or_renew(first), Ok(true));
        let later = first + Duration::from_secs(2);
        assert_eq!(a.try_acquire_or_renew(later), Ok(true));
        let record = api.lease.borrow().clone().unwrap().record;
        assert_eq!(record.acquire_time, "2026-12-02T16:00:00.000000Z");
        assert_eq!(record.renew_time, "2026-12-02T16:00:02.000000Z");
        assert_eq!(record.transitions, 0);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let api = FakeApi::new();
        let wall = SystemTime::now();
        let (mut a, mut b) = a_leads_and_b_stands_by(&api, wall);
        a.release(wall).unwrap();
        assert_eq!(api.holder(), "");
        assert_eq!(b.try_acquire_or_renew(wall), Ok(true));
    }

    #[test]
    fn a_conflicting_write_means_another_replica_won() {
        let api = FakeApi::new();
        let (mut a, mut b) = (elector(&api, "a"), elector(&api, "b"));
        let wall = SystemTime::now();
        assert_eq!(a.try_acquire_or_renew(wall), Ok(true));
        a.release(wall).unwrap();
        // b read the released Lease, then a took it back before b's write: b's write conflicts.
        let released = api.lease.borrow().clone().unwrap();
        assert_eq!(a.try_acquire_or_renew(wall), Ok(true));
        let record = LeaseRecord {
            holder: "b".into(),
            ..released.record.clone()
        };
        assert_eq!(
            b.written((&api).update(&record, &released.resource_version)),
            Ok(false)
        );
        assert_eq!(api.holder(), "a");
    }

    #[test]
    fn a_leader_that_cannot_renew_stops_fetching_within_the_renew_deadline() {
        let api = FakeApi::new();
        let mut a = elector(&api, "a");
        let mut reporter = Reporter {
            leadership: Arc::new(Leadership::new(Some(Duration::from_secs(10)))),
            metrics: Arc::new(Metrics::new()),
            what: "lease".into(),
            last_failure: None,
        };
        let mut try_at = |seconds: u64| {
            let started = api.at(seconds * 1_000);
            let held = a.try_acquire_or_renew(SystemTime::now());
            reporter.step(held, started);
            (
                reporter.leadership.is_leader(),
                reporter.leadership.may_fetch(),
            )
        };
        assert_eq!(try_at(0), (true, true));
        *api.down.borrow_mut() = true;
        assert!(try_at(9).0, "still the leader within the renew deadline");
        assert_eq!(try_at(10), (false, false), "stepped down at the deadline");
        *api.down.borrow_mut() = false;
        assert!(try_at(11).0, "it holds the Lease again");
        assert_eq!(reporter.metrics.leader_transitions.get(), 3);
        assert_eq!(reporter.metrics.leader.get(&[]), 1);
    }

    #[test]
    fn without_an_election_every_replica_fetches() {
        assert!(Leadership::new(None).may_fetch());
        assert!(!Leadership::new(Some(Duration::from_secs(10))).may_fetch());
    }
}
