//! An in-process Open Match backend double: a ticket pool with available / pending / assigned
//! states, FetchMatches that streams matches of four tickets fitting the profile's first pool
//! (plain, or with a backfill), backfills that game servers acknowledge, and a record of every
//! request it received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::proto::backend::*;
use crate::proto::backend_grpc::{create_backend_service, BackendService};
use crate::proto::messages::{
    Backfill, DoubleRangeFilter_Exclude, Match, Pool, SearchFields, Ticket,
};
use futures_util::{SinkExt, TryFutureExt};

use super::server::Served;
use super::tls::ServerTls;
use grpcio::{
    RpcContext, RpcStatus, RpcStatusCode, ServerCredentials, ServerStreamingSink, UnarySink,
    WriteFlags,
};

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
    hung: Vec<Box<dyn std::any::Any + Send>>,
    index: HashMap<String, usize>,
    by_match_ticket: HashMap<String, String>,
    next_ticket: usize,
    next_match: usize,
    next_backfill: usize,
    random: u64,
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

/// The running double.
pub struct FakeOpenMatch {
    state: Arc<Mutex<OmState>>,
    tls: Option<ServerTls>,
    served: Served,
    /// The port it listens on.
    pub port: u16,
}

impl FakeOpenMatch {
    /// Starts a plaintext backend on a free loopback port.
    pub fn start() -> FakeOpenMatch {
        FakeOpenMatch::start_with(None)
    }

    /// Starts a backend on a free loopback port, with TLS when `tls` is given.
    pub fn start_with(tls: Option<ServerTls>) -> FakeOpenMatch {
        let state = Arc::new(Mutex::new(OmState {
            keep_requests: true,
            ..OmState::default()
        }));
        let served = {
            let state = Arc::clone(&state);
            let service = move || {
                create_backend_service(Backend {
                    state: Arc::clone(&state),
                })
            };
            Served::start("Open Match", service, credentials(tls.as_ref()), 0)
        };
        FakeOpenMatch {
            state,
            tls,
            port: served.port,
            served,
        }
    }

    /// Locks the state for reading or for setting faults.
    pub fn state(&self) -> MutexGuard<'_, OmState> {
        self.state.lock().unwrap()
    }

    /// Adds a ticket with the given double args and tags; returns its id.
    pub fn add_ticket(&self, double_args: &[(&str, f64)], tags: &[&str]) -> String {
        let mut state = self.state();
        state.next_ticket += 1;
        let width = state.ticket_id_len.saturating_sub("ticket-".len()).max(4);
        let id = format!("ticket-{:0width$}", state.next_ticket);
        let mut fields = SearchFields::new();
        for (arg, value) in double_args {
            fields.mut_double_args().insert(arg.to_string(), *value);
        }
        for tag in tags {
            fields.mut_tags().push(tag.to_string());
        }
        let position = state.tickets.len();
        state.index.insert(id.clone(), position);
        state.tickets.push(PoolTicket {
            id: id.clone(),
            search_fields: fields,
            status: TicketStatus::Available,
            created_at: Instant::now(),
            pending_since: None,
            assigned_at: None,
        });
        id
    }

    /// Adds `count` players tagged `mode.session` with `latency` to `region` and far too much
    /// latency (100000 ms) to every other region in `regions`.
    pub fn add_players(
        &self,
        regions: &[&str],
        region: &str,
        latency: f64,
        count: usize,
    ) -> Vec<String> {
        let args: Vec<(String, f64)> = regions
            .iter()
            .map(|r| {
                (
                    format!("latency-{r}"),
                    if *r == region { latency } else { 100_000.0 },
                )
            })
            .collect();
        let args: Vec<(&str, f64)> = args.iter().map(|(a, v)| (a.as_str(), *v)).collect();
        (0..count)
            .map(|_| self.add_ticket(&args, &["mode.session"]))
            .collect()
    }

    /// What FrontendService.AcknowledgeBackfill does: records `connection` as backfill `id`'s
    /// game server and assigns it the tickets of the top-up matches waiting for it; `false` when
    /// the backfill does not exist.
    pub fn acknowledge_backfill(&self, id: &str, connection: &str) -> bool {
        let mut state = self.state();
        let Some(record) = state.backfills.get_mut(id) else {
            return false;
        };
        record.connection = Some(connection.to_string());
        let waiting = std::mem::take(&mut record.pending);
        let now = Instant::now();
        for ticket in waiting {
            let pending = state
                .index
                .get(&ticket)
                .is_some_and(|&i| state.tickets[i].status == TicketStatus::Pending);
            if pending && state.assign_ticket(&ticket, connection, now) {
                state.assigned_by_backfill += 1;
            }
        }
        true
    }

    /// What FrontendService.DeleteBackfill does when a game ends: the backfill is gone and the
    /// tickets still waiting for it are matchable again.
    pub fn delete_backfill(&self, id: &str) {
        let mut state = self.state();
        let Some(record) = state.backfills.remove(id) else {
            return;
        };
        for ticket in record.pending {
            if let Some(&position) = state.index.get(&ticket) {
                let ticket = &mut state.tickets[position];
                if ticket.status == TicketStatus::Pending {
                    ticket.status = TicketStatus::Available;
                    ticket.pending_since = None;
                }
            }
        }
    }

    /// Stops serving (the state is kept); calls fail with UNAVAILABLE until [`Self::restart`].
    pub fn stop(&mut self) {
        self.served.stop();
    }

    /// Serves again on the same port, with the same state.
    pub fn restart(&mut self) {
        self.served.restart(credentials(self.tls.as_ref()));
    }
}

fn credentials(tls: Option<&ServerTls>) -> ServerCredentials {
    tls.map_or_else(ServerCredentials::insecure, ServerTls::credentials)
}

#[derive(Clone)]
struct Backend {
    state: Arc<Mutex<OmState>>,
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
    fn assign_ticket(&mut self, id: &str, connection: &str, now: Instant) -> bool {
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
    fn next_kind(&mut self, profile: &str) -> MatchKind {
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
    fn chance(&mut self) -> f64 {
        if self.random == 0 {
            self.random = 0x9E37_79B9_7F4A_7C15;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Gives match `m` (already holding its tickets) the backfill of `kind`, and records it.
    fn attach_backfill(&mut self, m: &mut Match, kind: MatchKind) {
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
    fn expire_pending(&mut self) {
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

impl Backend {
    /// Matches for the request's profile, and the code to fail the stream with after them.
    fn make_matches(&self, request: &FetchMatchesRequest) -> (Vec<Match>, Option<RpcStatusCode>) {
        let mut state = self.state.lock().unwrap();
        if state.keep_requests {
            state.fetches.push(request.clone());
        }
        state.expire_pending();
        let profile = request.get_profile();
        let Some(pool) = profile.get_pools().first() else {
            return (Vec::new(), None);
        };
        let fitting: Vec<usize> = state
            .tickets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.status == TicketStatus::Available && fits(pool, &t.search_fields))
            .map(|(i, _)| i)
            .collect();
        let fault = if fitting.len() >= MATCH_SIZE {
            state.faults.fetch_fail_after.take()
        } else {
            None
        };
        let limit = fault.map_or(usize::MAX, |(count, _)| count);
        let mut matches = Vec::new();
        if state.faults.empty_matches > 0 {
            state.faults.empty_matches -= 1;
            let mut empty = Match::new();
            empty.set_match_id(format!("empty-{}", state.faults.empty_matches));
            empty.set_match_profile(profile.get_name().to_string());
            matches.push(empty);
        }
        for chunk in fitting.chunks_exact(MATCH_SIZE).take(limit) {
            state.next_match += 1;
            let match_id = format!("profile-{}-time-{}", profile.get_name(), state.next_match);
            let mut m = Match::new();
            m.set_match_id(match_id.clone());
            m.set_match_profile(profile.get_name().to_string());
            m.set_match_function("double".into());
            let now = Instant::now();
            for &index in chunk {
                state.tickets[index].status = TicketStatus::Pending;
                state.tickets[index].pending_since = Some(now);
                let ticket_id = state.tickets[index].id.clone();
                state.by_match_ticket.insert(ticket_id, match_id.clone());
                let mut ticket = Ticket::new();
                ticket.set_id(state.tickets[index].id.clone());
                ticket.set_search_fields(state.tickets[index].search_fields.clone());
                m.mut_tickets().push(ticket);
            }
            let kind = state.next_kind(profile.get_name());
            state.attach_backfill(&mut m, kind);
            let tops_up = (m.has_backfill() && !m.get_allocate_gameserver()).then(|| {
                state.backfills[m.get_backfill().get_id()]
                    .created_by
                    .clone()
            });
            state.matches.insert(
                match_id,
                IssuedMatch {
                    profile: profile.get_name().to_string(),
                    ticket_ids: m
                        .get_tickets()
                        .iter()
                        .map(|t| t.get_id().to_string())
                        .collect(),
                    streamed_at: now,
                    assigned_at: None,
                    released_at: None,
                    backfill: m
                        .has_backfill()
                        .then(|| m.get_backfill().get_id().to_string()),
                    allocate_gameserver: m.get_allocate_gameserver(),
                    tops_up,
                },
            );
            matches.push(m);
        }
        (matches, fault.map(|(_, code)| code))
    }
}

impl BackendService for Backend {
    fn fetch_matches(
        &mut self,
        ctx: RpcContext,
        request: FetchMatchesRequest,
        mut sink: ServerStreamingSink<FetchMatchesResponse>,
    ) {
        let (matches, fault) = self.make_matches(&request);
        ctx.spawn(async move {
            for m in matches {
                let mut response = FetchMatchesResponse::new();
                response.set_field_match(m);
                if sink.send((response, WriteFlags::default())).await.is_err() {
                    return;
                }
            }
            let _ = match fault {
                Some(code) => {
                    sink.fail(RpcStatus::with_message(
                        code,
                        "error(s) in FetchMatches call. syncErr=[], mmfErr=[injected]".into(),
                    ))
                    .await
                }
                None => sink.close().await,
            };
        });
    }

    fn assign_tickets(
        &mut self,
        ctx: RpcContext,
        request: AssignTicketsRequest,
        sink: UnarySink<AssignTicketsResponse>,
    ) {
        if self.hangs_writes() {
            return self.hold(sink);
        }
        let result = self.assign(request);
        self.reply_in_time(ctx, sink, result);
    }

    fn release_tickets(
        &mut self,
        ctx: RpcContext,
        request: ReleaseTicketsRequest,
        sink: UnarySink<ReleaseTicketsResponse>,
    ) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let ids = request.get_ticket_ids().to_vec();
        if state.faults.hang_writes {
            state.releases.push(ids);
            drop(guard);
            return self.hold(sink);
        }
        for id in &ids {
            if let Some(&position) = state.index.get(id) {
                let ticket = &mut state.tickets[position];
                if ticket.status == TicketStatus::Pending {
                    ticket.status = TicketStatus::Available;
                    ticket.pending_since = None;
                }
            }
            if let Some(m) = state
                .by_match_ticket
                .get(id)
                .and_then(|match_id| state.matches.get_mut(match_id))
            {
                m.released_at.get_or_insert_with(Instant::now);
            }
        }
        state.releases.push(ids);
        drop(guard);
        self.reply_in_time(ctx, sink, Ok(ReleaseTicketsResponse::new()));
    }
}

impl Backend {
    /// Whether calls are to hang (`faults.hang_writes`).
    fn hangs_writes(&self) -> bool {
        self.state.lock().unwrap().faults.hang_writes
    }

    /// Answers a write at once, or after `faults.slow_writes` (from a thread of its own, so that
    /// the server goes on serving meanwhile).
    fn reply_in_time<T: Send + 'static>(
        &self,
        ctx: RpcContext,
        sink: UnarySink<T>,
        result: Result<T, RpcStatus>,
    ) {
        let delay = self.state.lock().unwrap().faults.slow_writes;
        if delay.is_zero() {
            return reply(ctx, sink, result);
        }
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = futures_executor::block_on(match result {
                Ok(response) => sink.success(response),
                Err(status) => sink.fail(status),
            });
        });
    }

    /// Keeps a call open without answering it.
    fn hold<T: Send + 'static>(&self, sink: UnarySink<T>) {
        self.state.lock().unwrap().hung.push(Box::new(sink));
    }

    fn assign(&self, request: AssignTicketsRequest) -> Result<AssignTicketsResponse, RpcStatus> {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        if state.keep_requests {
            state.assigns.push(request.clone());
        }
        if state.faults.assign_unavailable > 0 {
            state.faults.assign_unavailable -= 1;
            return Err(RpcStatus::with_message(
                RpcStatusCode::UNAVAILABLE,
                "redis down".into(),
            ));
        }
        let mut seen = Vec::new();
        for group in request.get_assignments() {
            if group.get_ticket_ids().is_empty() || !group.has_assignment() {
                return Err(RpcStatus::new(RpcStatusCode::INVALID_ARGUMENT));
            }
            for id in group.get_ticket_ids() {
                if seen.contains(id) {
                    return Err(RpcStatus::with_message(
                        RpcStatusCode::INVALID_ARGUMENT,
                        format!("ticket id {id} is assigned multiple times in one request"),
                    ));
                }
                seen.push(id.clone());
            }
        }
        let mut response = AssignTicketsResponse::new();
        for group in request.get_assignments() {
            let connection = group.get_assignment().get_connection().to_string();
            for id in group.get_ticket_ids() {
                let not_found = state.faults.not_found.contains(id);
                if not_found || !state.assign_ticket(id, &connection, Instant::now()) {
                    let mut failure = AssignmentFailure::new();
                    failure.set_ticket_id(id.clone());
                    failure.set_cause(AssignmentFailure_Cause::TICKET_NOT_FOUND);
                    response.mut_failures().push(failure);
                }
            }
        }
        Ok(response)
    }
}

/// Sends a unary reply without blocking the server's thread.
pub fn reply<T: Send + 'static>(ctx: RpcContext, sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    let send = match result {
        Ok(response) => sink.success(response),
        Err(status) => sink.fail(status),
    };
    ctx.spawn(send.unwrap_or_else(|_| ()));
}
