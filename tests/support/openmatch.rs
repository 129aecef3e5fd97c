//! An in-process Open Match backend double: a ticket pool with available / pending / assigned
//! states, FetchMatches that streams matches of four tickets fitting the profile's first pool,
//! and a record of every request it received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agones_openmatch_director::proto::backend::*;
use agones_openmatch_director::proto::backend_grpc::{create_backend_service, BackendService};
use agones_openmatch_director::proto::messages::{Match, Pool, SearchFields, Ticket};
use futures_util::{SinkExt, TryFutureExt};

use super::tls::ServerTls;
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials,
    ServerStreamingSink, UnarySink, WriteFlags,
};

/// Tickets per match, as in the match function the Go director paired with.
pub const MATCH_SIZE: usize = 4;

/// Where a ticket is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    Available,
    Pending,
    Assigned { connection: String, times: usize },
}

/// A ticket in the pool.
#[derive(Clone, Debug)]
pub struct PoolTicket {
    pub id: String,
    pub search_fields: SearchFields,
    pub status: TicketStatus,
    pub created_at: Instant,
    pub pending_since: Option<Instant>,
    pub assigned_at: Option<Instant>,
}

/// A match the double handed out, and the profile it was handed out for.
#[derive(Clone, Debug)]
pub struct IssuedMatch {
    pub profile: String,
    pub ticket_ids: Vec<String>,
    /// When it was put on the FetchMatches stream.
    pub streamed_at: Instant,
    /// When the first AssignTickets naming its tickets arrived.
    pub assigned_at: Option<Instant>,
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
}

/// Everything the double knows and saw.
#[derive(Default, Debug)]
pub struct OmState {
    pub tickets: Vec<PoolTicket>,
    pub fetches: Vec<FetchMatchesRequest>,
    pub matches: HashMap<String, IssuedMatch>,
    pub assigns: Vec<AssignTicketsRequest>,
    pub releases: Vec<Vec<String>>,
    pub faults: OmFaults,
    /// Like Open Match's pendingReleaseTimeout: pending tickets older than this become available.
    pub pending_release_timeout: Option<Duration>,
    /// Tickets returned to the pool by that timeout.
    pub timed_out: usize,
    /// Whether to record every request (tests) or only count them (long simulations).
    pub keep_requests: bool,
    index: HashMap<String, usize>,
    by_match_ticket: HashMap<String, String>,
    next_ticket: usize,
    next_match: usize,
}

impl OmState {
    pub fn ticket(&self, id: &str) -> &PoolTicket {
        &self.tickets[self.index[id]]
    }

    pub fn count(&self, wanted: impl Fn(&TicketStatus) -> bool) -> usize {
        self.tickets.iter().filter(|t| wanted(&t.status)).count()
    }

    pub fn assigned(&self) -> usize {
        self.count(|s| matches!(s, TicketStatus::Assigned { .. }))
    }

    pub fn released_ids(&self) -> Vec<String> {
        self.releases.iter().flatten().cloned().collect()
    }
}

/// The running double.
pub struct FakeOpenMatch {
    state: Arc<Mutex<OmState>>,
    tls: Option<ServerTls>,
    server: Option<Server>,
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
        let (server, port) = serve(&state, tls.as_ref(), 0);
        FakeOpenMatch {
            state,
            tls,
            server: Some(server),
            port,
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
        let id = format!("ticket-{:04}", state.next_ticket);
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

    /// Stops serving (the state is kept); calls fail with UNAVAILABLE until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = futures_executor::block_on(server.shutdown());
        }
    }

    /// Serves again on the same port, with the same state.
    pub fn restart(&mut self) {
        let (server, port) = serve(&self.state, self.tls.as_ref(), self.port);
        assert_eq!(port, self.port);
        self.server = Some(server);
    }
}

impl Drop for FakeOpenMatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(state: &Arc<Mutex<OmState>>, tls: Option<&ServerTls>, port: u16) -> (Server, u16) {
    let env = Arc::new(Environment::new(1));
    let service = create_backend_service(Backend {
        state: Arc::clone(state),
    });
    let mut server = ServerBuilder::new(env)
        .register_service(service)
        .build()
        .expect("build Open Match double");
    let port = server
        .add_listening_port(
            format!("127.0.0.1:{port}"),
            tls.map_or_else(ServerCredentials::insecure, ServerTls::credentials),
        )
        .expect("bind Open Match double");
    server.start();
    (server, port)
}

#[derive(Clone)]
struct Backend {
    state: Arc<Mutex<OmState>>,
}

/// Whether a ticket passes every filter of `pool` (ranges inclusive, as Open Match's default).
pub fn fits(pool: &Pool, fields: &SearchFields) -> bool {
    let ranges = pool.get_double_range_filters().iter().all(|f| {
        fields
            .get_double_args()
            .get(f.get_double_arg())
            .is_some_and(|v| *v >= f.get_min() && *v <= f.get_max())
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
        let result = self.assign(request);
        reply(ctx, sink, result);
    }

    fn release_tickets(
        &mut self,
        ctx: RpcContext,
        request: ReleaseTicketsRequest,
        sink: UnarySink<ReleaseTicketsResponse>,
    ) {
        let mut state = self.state.lock().unwrap();
        let ids = request.get_ticket_ids().to_vec();
        for id in &ids {
            if let Some(&position) = state.index.get(id) {
                let ticket = &mut state.tickets[position];
                if ticket.status == TicketStatus::Pending {
                    ticket.status = TicketStatus::Available;
                    ticket.pending_since = None;
                }
            }
        }
        state.releases.push(ids);
        drop(state);
        reply(ctx, sink, Ok(ReleaseTicketsResponse::new()));
    }
}

impl Backend {
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
                let now = Instant::now();
                if let Some(m) = state
                    .by_match_ticket
                    .get(id)
                    .and_then(|match_id| state.matches.get_mut(match_id))
                {
                    m.assigned_at.get_or_insert(now);
                }
                match state.index.get(id).map(|&i| &mut state.tickets[i]) {
                    Some(ticket) if !not_found => {
                        ticket.assigned_at.get_or_insert(now);
                        ticket.pending_since = None;
                        let times = match &ticket.status {
                            TicketStatus::Assigned { times, .. } => times + 1,
                            _ => 1,
                        };
                        ticket.status = TicketStatus::Assigned {
                            connection: connection.clone(),
                            times,
                        };
                    }
                    _ => {
                        let mut failure = AssignmentFailure::new();
                        failure.set_ticket_id(id.clone());
                        failure.set_cause(AssignmentFailure_Cause::TICKET_NOT_FOUND);
                        response.mut_failures().push(failure);
                    }
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
