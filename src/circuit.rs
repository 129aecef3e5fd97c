//! A circuit breaker per region: after repeated failures that mean "the allocator is down"
//! (UNAVAILABLE, DEADLINE_EXCEEDED) over [`OUTAGE_TO_OPEN`] or more, the region's matches are
//! released at once instead of each burning its retry budget; after a pause one probe call is let
//! through, and its result closes the circuit or opens it again for twice as long. An outage
//! shorter than [`OUTAGE_TO_OPEN`] (a rolled allocator, a blip) is ridden out by the retries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;

use crate::sync::lock;

/// Consecutive outage failures that open the circuit, if they span [`OUTAGE_TO_OPEN`].
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long the consecutive outage failures must span, from the start of the first failed call.
pub const OUTAGE_TO_OPEN: Duration = Duration::from_secs(5);
/// The first pause before a probe; it doubles on every failed probe, up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_secs(2);
/// The longest pause before a probe.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Whether a call may go to the region's allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: call.
    Call,
    /// The pause is over: this call is the probe; its result decides.
    Probe,
    /// The circuit is open: do not call.
    Refused,
}

/// What the breaker's state changed to after a result, to log and export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// It opened, for this long before a probe.
    Opened(Duration),
    /// A successful call closed it.
    Closed,
}

#[derive(Debug)]
enum State {
    /// `failures` consecutive outage failures, the first of which started at `since`.
    Closed {
        failures: u32,
        since: Option<Instant>,
    },
    Open {
        until: Instant,
        pause: Duration,
    },
    /// A probe was admitted at `since`; only a call started since then decides.
    Probing {
        pause: Duration,
        since: Instant,
    },
}

/// One region's circuit breaker, shared by its workers.
#[derive(Debug)]
pub struct Circuit {
    state: Mutex<State>,
    /// A probe whose result has not come after this is taken as lost, and another is let through.
    probe_timeout: Duration,
}

impl Circuit {
    /// A closed circuit whose probes are taken as lost after `probe_timeout` (no Allocate runs
    /// longer than a match's MATCH_DEADLINE).
    pub fn new(probe_timeout: Duration) -> Circuit {
        Circuit {
            state: Mutex::new(CLOSED),
            probe_timeout,
        }
    }
}

impl Default for Circuit {
    /// With the default MATCH_DEADLINE as its probe timeout.
    fn default() -> Self {
        Circuit::new(Duration::from_secs(45))
    }
}

const CLOSED: State = State::Closed {
    failures: 0,
    since: None,
};

/// Whether a failure with `code` says the allocator itself is down or hung (other failures, such
/// as no Ready game server, are answers from a working allocator).
pub fn is_outage(code: RpcStatusCode) -> bool {
    matches!(
        code,
        RpcStatusCode::UNAVAILABLE | RpcStatusCode::DEADLINE_EXCEEDED
    )
}

impl Circuit {
    /// Whether a call may be made now. At most one probe is in flight at a time; one that has
    /// not reported within the probe timeout is taken as lost.
    pub fn admit(&self) -> Admission {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Admission::Call,
            State::Open { until, pause } if now >= until => {
                *state = State::Probing { pause, since: now };
                Admission::Probe
            }
            State::Probing { pause, since } if now - since >= self.probe_timeout => {
                *state = State::Probing { pause, since: now };
                Admission::Probe
            }
            State::Open { .. } | State::Probing { .. } => Admission::Refused,
        }
    }

    /// Whether the circuit refuses calls now: open and pausing, or with a probe in flight. Once
    /// the pause is over, nothing is refused: the next call is the probe.
    pub fn is_open(&self) -> bool {
        match *lock(&self.state) {
            State::Closed { .. } => false,
            State::Open { until, .. } => Instant::now() < until,
            State::Probing { .. } => true,
        }
    }

    /// Whether new matches can be used now: the circuit is closed, or its pause is over and the
    /// next call would be the probe. Matches fetched while it is open would only be released at
    /// once, so the region's fetchers wait for this.
    pub fn wants_matches(&self) -> bool {
        match *lock(&self.state) {
            State::Closed { .. } => true,
            State::Open { until, .. } => Instant::now() >= until,
            State::Probing { .. } => false,
        }
    }

    /// Records the result of an admitted call that started at `started`: `None` for success,
    /// else its status code.
    pub fn record(&self, started: Instant, failure: Option<RpcStatusCode>) -> Option<Transition> {
        let mut state = lock(&self.state);
        let outage = failure.is_some_and(is_outage);
        let (next, transition) = match (&*state, outage) {
            (State::Closed { .. }, false) => (CLOSED, None),
            (State::Closed { failures, since }, true) => {
                let since = since.map_or(started, |since| since.min(started));
                if failures + 1 >= FAILURES_TO_OPEN && since.elapsed() >= OUTAGE_TO_OPEN {
                    open(FIRST_PAUSE)
                } else {
                    let failures = failures + 1;
                    (
                        State::Closed {
                            failures,
                            since: Some(since),
                        },
                        None,
                    )
                }
            }
            (State::Probing { pause, since }, _) if started < *since => (
                State::Probing {
                    pause: *pause,
                    since: *since,
                },
                None,
            ),
            (State::Probing { .. }, false) => (CLOSED, Some(Transition::Closed)),
            (State::Probing { pause, .. }, true) => open((*pause * 2).min(MAX_PAUSE)),
            (State::Open { until, pause }, _) => (
                State::Open {
                    until: *until,
                    pause: *pause,
                },
                None,
            ),
        };
        *state = next;
        transition
    }
}

fn open(pause: Duration) -> (State, Option<Transition>) {
    (
        State::Open {
            until: Instant::now() + pause,
            pause,
        },
        Some(Transition::Opened(pause)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Option<RpcStatusCode> = Some(RpcStatusCode::UNAVAILABLE);

    /// A call that started `OUTAGE_TO_OPEN` ago.
    fn long_ago() -> Instant {
        Instant::now() - OUTAGE_TO_OPEN
    }

    fn opened(circuit: &Circuit) -> Option<Transition> {
        (0..FAILURES_TO_OPEN)
            .map(|_| circuit.record(long_ago(), DOWN))
            .last()
            .flatten()
    }

    /// Moves an open circuit's probe time to now.
    fn pause_over(circuit: &Circuit) {
        let mut state = lock(&circuit.state);
        if let State::Open { until, .. } = &mut *state {
            *until = Instant::now();
        }
    }

    #[test]
    fn opens_after_consecutive_outage_failures_only() {
        let circuit = Circuit::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert_eq!(circuit.record(long_ago(), DOWN), None);
        }
        assert_eq!(
            circuit.record(long_ago(), None),
            None,
            "a success resets the count"
        );
        for _ in 0..10 {
            circuit.record(long_ago(), Some(RpcStatusCode::RESOURCE_EXHAUSTED));
        }
        assert_eq!(
            circuit.admit(),
            Admission::Call,
            "no Ready server is not an outage"
        );
        assert_eq!(opened(&circuit), Some(Transition::Opened(FIRST_PAUSE)));
        assert!(circuit.is_open());
        assert_eq!(circuit.admit(), Admission::Refused);
    }

    #[test]
    fn a_short_outage_does_not_open_it() {
        let circuit = Circuit::default();
        for _ in 0..FAILURES_TO_OPEN * 4 {
            assert_eq!(circuit.record(Instant::now(), DOWN), None);
        }
        assert_eq!(circuit.admit(), Admission::Call);
        assert_eq!(
            circuit.record(long_ago(), DOWN),
            Some(Transition::Opened(FIRST_PAUSE)),
            "once a failed call started OUTAGE_TO_OPEN ago, it opens"
        );
    }

    #[test]
    fn one_probe_after_the_pause_closes_it_or_doubles_the_pause() {
        let circuit = Circuit::default();
        opened(&circuit);
        pause_over(&circuit);
        assert_eq!(circuit.admit(), Admission::Probe);
        assert_eq!(circuit.admit(), Admission::Refused, "one probe at a time");
        assert_eq!(
            circuit.record(Instant::now(), Some(RpcStatusCode::DEADLINE_EXCEEDED)),
            Some(Transition::Opened(FIRST_PAUSE * 2))
        );
        pause_over(&circuit);
        assert_eq!(circuit.admit(), Admission::Probe);
        assert_eq!(
            circuit.record(Instant::now(), None),
            Some(Transition::Closed)
        );
        assert!(!circuit.is_open());
        assert_eq!(circuit.admit(), Admission::Call);
    }

    #[test]
    fn matches_are_wanted_while_closed_and_when_a_probe_is_due_only() {
        let circuit = Circuit::default();
        assert!(circuit.wants_matches());
        opened(&circuit);
        assert!(!circuit.wants_matches(), "open, pausing");
        pause_over(&circuit);
        assert!(circuit.wants_matches(), "the probe is due");
        assert_eq!(circuit.admit(), Admission::Probe);
        assert!(!circuit.wants_matches(), "the probe is in flight");
        circuit.record(Instant::now(), None);
        assert!(circuit.wants_matches(), "closed again");
    }

    #[test]
    fn the_pause_stops_growing_at_its_maximum() {
        let circuit = Circuit::default();
        opened(&circuit);
        let mut last = None;
        for _ in 0..10 {
            pause_over(&circuit);
            assert_eq!(circuit.admit(), Admission::Probe);
            last = circuit.record(Instant::now(), DOWN);
        }
        assert_eq!(last, Some(Transition::Opened(MAX_PAUSE)));
    }

    #[test]
    fn late_results_of_calls_admitted_before_it_opened_change_nothing() {
        let circuit = Circuit::default();
        opened(&circuit);
        assert_eq!(circuit.record(Instant::now(), None), None);
        assert_eq!(circuit.record(Instant::now(), DOWN), None);
        assert_eq!(circuit.admit(), Admission::Refused);
    }

    #[test]
    fn a_late_result_of_a_call_admitted_before_the_probe_does_not_decide_it() {
        let circuit = Circuit::default();
        opened(&circuit);
        pause_over(&circuit);
        assert_eq!(circuit.admit(), Admission::Probe);
        assert_eq!(
            circuit.record(long_ago(), None),
            None,
            "an old call's success"
        );
        assert_eq!(circuit.admit(), Admission::Refused, "still probing");
        assert_eq!(
            circuit.record(Instant::now(), DOWN),
            Some(Transition::Opened(FIRST_PAUSE * 2)),
            "the probe's own result decides"
        );
    }

    #[test]
    fn after_its_pause_an_idle_circuit_is_not_reported_open() {
        let circuit = Circuit::default();
        opened(&circuit);
        assert!(circuit.is_open());
        pause_over(&circuit);
        assert!(
            !circuit.is_open(),
            "no traffic: nothing is refused any more"
        );
        assert_eq!(circuit.admit(), Admission::Probe);
        assert!(circuit.is_open(), "a probe in flight");
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_the_probe_timeout() {
        let circuit = Circuit::new(Duration::from_secs(4));
        opened(&circuit);
        pause_over(&circuit);
        assert_eq!(circuit.admit(), Admission::Probe);
        assert_eq!(circuit.admit(), Admission::Refused);
        if let State::Probing { since, .. } = &mut *lock(&circuit.state) {
            *since -= Duration::from_secs(4);
        }
        assert_eq!(
            circuit.admit(),
            Admission::Probe,
            "the lost probe no longer holds it"
        );
        assert_eq!(circuit.admit(), Admission::Refused);
    }
}
