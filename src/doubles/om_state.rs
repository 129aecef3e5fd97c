//! What the Open Match double knows: its tickets and their states, the matches and backfills it
//! handed out, the faults to inject, and the match function's choices.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::backend::{AssignTicketsRequest, FetchMatchesRequest};
use crate::proto::messages::{Backfill, DoubleRangeFilter_Exclude, Match, Pool, SearchFields};
use grpcio::RpcStatusCode;

/// Tickets per match, as in the match function the Go director paired with.
pub const MATCH_SIZE: usize = 4;

/// Where a ticket is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    /// In the pool, matchable.
    Available,
    /// In a match handed out, waiting for an assignment or a release.
    Pending,
    /// Assigned `connection`, by `times` AssignTickets calls.
    Assigned {
        /// The connection of the latest assignment.
        connection: String,
        /// How many AssignTickets calls assigned it.
        times: usize,
    },
}

/// A ticket in the pool.
#[derive(Clone, Debug)]
pub struct PoolTicket {
    /// Its id.
    pub id: String,
    /// What profiles filter on.
    pub search_fields: SearchFields,
    /// Where it is in its life.
    pub status: TicketStatus,
    /// When it was added.
    pub created_at: Instant,
    /// When it last became pending.
    pub pending_since: Option<Instant>,
    /// When it was first assigned.
    pub assigned_at: Option<Instant>,
}

/// A match the double handed out, and the profile it was handed out for.
#[derive(Clone, Debug)]
pub struct IssuedMatch {
    /// The profile's name.
    pub profile: String,
    /// Its tickets.
    pub ticket_ids: Vec<String>,
    /// When it was put on the FetchMatches stream.
    pub streamed_at: Instant,
    /// When the first AssignTickets naming its tickets arrived (or, for a top-up match, the
    /// acknowledgement that assigned them).
    pub assigned_at: Option<Instant>,
    /// When the first ReleaseTickets naming its tickets arrived.
    pub released_at: Option<Instant>,
    /// The id of its backfill, if it has one.
    pub backfill: Option<String>,
    /// `allocate_gameserver`: the match's backfill is new and needs a game server.
    pub allocate_gameserver: bool,
    /// For a match that tops up a running game: the match whose game server runs that game.
    pub tops_up: Option<String>,
}

/// What kind of match the match function makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchKind {
    /// A match without a backfill.
    Plain,
    /// A match that creates a new backfill (`allocate_gameserver = true`).
    NewBackfill,
    /// A match that tops up the running backfill with this id (`allocate_gameserver = false`).
    TopUp(String),
}

/// A backfill the double knows.
#[derive(Clone, Debug, Default)]
pub struct BackfillRecord {
    /// 1 when created, one more with each match that updates it.
    pub generation: i64,
    /// The match that created it.
    pub created_by: String,
    /// The connection of the game server that last acknowledged it.
    pub connection: Option<String>,
    /// Tickets of top-up matches that wait for the game server's next acknowledgement.
    pub pending: Vec<String>,
}

/// Faults to inject.
#[derive(Default, Debug)]
pub struct OmFaults {
    /// The next FetchMatches that finds a match streams at most this many, then fails with this code.
    pub fetch_fail_after: Option<(usize, RpcStatusCode)>,
    /// Tickets AssignTickets reports as TICKET_NOT_FOUND (and does not assign).
    pub not_found: Vec<String>,
    /// The next this many AssignTickets calls fail with UNAVAILABLE.
    pub assign_unavailable: usize,
    /// The next this many FetchMatches calls stream a match without tickets first.
    pub empty_matches: usize,
    /// AssignTickets and ReleaseTickets are received but never answered: they run into their
    /// deadlines, like calls to a hung backend.
    pub hang_writes: bool,
    /// AssignTickets and ReleaseTickets take effect at once but are answered only after this
    /// long, like calls to a slow but reachable backend.
    pub slow_writes: Duration,
}

/// Everything the double knows and saw.
#[derive(Default, Debug)]
pub struct OmState {
    /// Every ticket ever added.
    pub tickets: Vec<PoolTicket>,
    /// Every FetchMatches request (when `keep_requests`).
    pub fetches: Vec<FetchMatchesRequest>,
    /// When each FetchMatches request arrived, with the match function host it named (when
    /// `keep_requests`).
    pub fetch_times: Vec<(Instant, String)>,
    /// Every match handed out, by id.
    pub matches: HashMap<String, IssuedMatch>,
    /// How many of them got an AssignTickets.
    pub assigned_matches: usize,
    /// Every AssignTickets request (when `keep_requests`).
    pub assigns: Vec<AssignTicketsRequest>,
    /// The ticket ids of every ReleaseTickets request received.
    pub releases: Vec<Vec<String>>,
    /// Faults to inject.
    pub faults: OmFaults,
    /// Like Open Match's pendingReleaseTimeout: pending tickets older than this become available.
    pub pending_release_timeout: Option<Duration>,
    /// Tickets returned to the pool by that timeout.
    pub timed_out: usize,
    /// Whether to record every request (tests) or only count them (long simulations).
    pub keep_requests: bool,
    /// The kinds of the next matches, in order; once empty, kinds are drawn with
    /// `backfill_ratio`.
    pub kinds: VecDeque<MatchKind>,
    /// The share of matches that top up a running game (when there is one), and the share of the
    /// others that start a game with a new backfill; 0: plain matches only.
    pub backfill_ratio: f64,
    /// The length of the ticket ids made from now on (at least the default `ticket-NNNN`): long
    /// ids make large requests out of few tickets.
    pub ticket_id_len: usize,
    /// Every backfill that exists, by id.
    pub backfills: HashMap<String, BackfillRecord>,
    /// Tickets assigned by a game server's acknowledgement of its backfill.
    pub assigned_by_backfill: usize,
    /// The unanswered calls of `faults.hang_writes`, held open.
    pub(super) hung: Vec<Box<dyn std::any::Any + Send>>,
    pub(super) index: HashMap<String, usize>,
    pub(super) by_match_ticket: HashMap<String, String>,
    pub(super) next_ticket: usize,
    pub(super) next_match: usize,
    pub(super) next_backfill: usize,
    pub(super) random: u64,
}

impl OmState {
    /// The ticket `id`.
    pub fn ticket(&self, id: &str) -> &PoolTicket {
        &self.tickets[self.index[id]]
    }

    /// How many tickets have a `wanted` status.
    pub fn count(&self, wanted: impl Fn(&TicketStatus) -> bool) -> usize {
        self.tickets.iter().filter(|t| wanted(&t.status)).count()
    }

    /// How many tickets are assigned.
    pub fn assigned(&self) -> usize {
        self.count(|s| matches!(s, TicketStatus::Assigned { .. }))
    }

    /// Every ticket id named in a ReleaseTickets request, in order.
    pub fn released_ids(&self) -> Vec<String> {
        self.releases.iter().flatten().cloned().collect()
    }
}

/// Whether a ticket passes every filter of `pool` (ranges inclusive unless `exclude` says
/// otherwise, as in Open Match).
pub fn fits(pool: &Pool, fields: &SearchFields) -> bool {
    let ranges = pool.get_double_range_filters().iter().all(|f| {
        let (min_out, max_out) = match f.get_exclude() {
            DoubleRangeFilter_Exclude::NONE => (false, false),
            DoubleRangeFilter_Exclude::MIN => (true, false),
            DoubleRangeFilter_Exclude::MAX => (false, true),
            DoubleRangeFilter_Exclude::BOTH => (true, true),
        };
        fields
            .get_double_args()
            .get(f.get_double_arg())
            .is_some_and(|v| {
                let above_min = if min_out {
                    *v > f.get_min()
                } else {
                    *v >= f.get_min()
                };
                let below_max = if max_out {
                    *v < f.get_max()
                } else {
                    *v <= f.get_max()
                };
                above_min && below_max
            })
    });
    let tags = pool
        .get_tag_present_filters()
        .iter()
        .all(|f| fields.get_tags().iter().any(|t| t == f.get_tag()));
    let strings = pool.get_string_equals_filters().iter().all(|f| {
        fields
            .get_string_args()
            .get(f.get_string_arg())
            .map(String::as_str)
            == Some(f.get_value())
    });
    ranges && tags && strings
}

impl OmState {
    /// Assigns ticket `id` `connection` (counting its match as assigned the first time); `false`
    /// when there is no such ticket.
    pub(super) fn assign_ticket(&mut self, id: &str, connection: &str, now: Instant) -> bool {
        if let Some(m) = self
            .by_match_ticket
            .get(id)
            .and_then(|match_id| self.matches.get_mut(match_id))
        {
            if m.assigned_at.is_none() {
                m.assigned_at = Some(now);
                self.assigned_matches += 1;
            }
        }
        let Some(&position) = self.index.get(id) else {
            return false;
        };
        let ticket = &mut self.tickets[position];
        ticket.assigned_at.get_or_insert(now);
        ticket.pending_since = None;
        let times = match &ticket.status {
            TicketStatus::Assigned { times, .. } => times + 1,
            _ => 1,
        };
        ticket.status = TicketStatus::Assigned {
            connection: connection.to_string(),
            times,
        };
        true
    }

    /// The kind of the next match of `profile`: the next of `kinds`, else drawn with
    /// `backfill_ratio` (a top-up joins a running game of the same profile).
    pub(super) fn next_kind(&mut self, profile: &str) -> MatchKind {
        if let Some(kind) = self.kinds.pop_front() {
            return kind;
        }
        if self.backfill_ratio <= 0.0 {
            return MatchKind::Plain;
        }
        let mut running: Vec<String> = self
            .backfills
            .iter()
            .filter(|(_, b)| {
                b.connection.is_some()
                    && self
                        .matches
                        .get(&b.created_by)
                        .is_some_and(|m| m.profile == profile)
            })
            .map(|(id, _)| id.clone())
            .collect();
        running.sort();
        let (top_up, start) = (self.chance(), self.chance());
        match running.get(self.next_match % running.len().max(1)) {
            Some(id) if top_up < self.backfill_ratio => MatchKind::TopUp(id.clone()),
            _ if start < self.backfill_ratio => MatchKind::NewBackfill,
            _ => MatchKind::Plain,
        }
    }

    /// A pseudo-random number in [0, 1) (xorshift).
    pub(super) fn chance(&mut self) -> f64 {
        if self.random == 0 {
            self.random = 0x9E37_79B9_7F4A_7C15;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Gives match `m` (already holding its tickets) the backfill of `kind`, and records it.
    pub(super) fn attach_backfill(&mut self, m: &mut Match, kind: MatchKind) {
        let id = match kind {
            MatchKind::Plain => return,
            MatchKind::NewBackfill => {
                self.next_backfill += 1;
                let id = format!("backfill-{}", self.next_backfill);
                self.backfills.insert(
                    id.clone(),
                    BackfillRecord {
                        created_by: m.get_match_id().to_string(),
                        ..BackfillRecord::default()
                    },
                );
                m.set_allocate_gameserver(true);
                id
            }
            MatchKind::TopUp(id) => {
                let record = self.backfills.entry(id.clone()).or_default();
                record
                    .pending
                    .extend(m.get_tickets().iter().map(|t| t.get_id().to_string()));
                id
            }
        };
        let record = self.backfills.get_mut(&id).expect("recorded above");
        record.generation += 1;
        let mut backfill = Backfill::new();
        backfill.set_id(id);
        backfill.set_generation(record.generation);
        m.set_backfill(backfill);
    }

    /// Returns tickets pending longer than the pending-release timeout to the pool.
    pub(super) fn expire_pending(&mut self) {
        let Some(timeout) = self.pending_release_timeout else {
            return;
        };
        for ticket in &mut self.tickets {
            if ticket.status == TicketStatus::Pending
                && ticket
                    .pending_since
                    .is_some_and(|since| since.elapsed() >= timeout)
            {
                ticket.status = TicketStatus::Available;
                ticket.pending_since = None;
                self.timed_out += 1;
            }
        }
    }
}
