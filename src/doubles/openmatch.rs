//! An in-process Open Match backend double: a ticket pool with available / pending / assigned
//! states, FetchMatches that streams matches of four tickets fitting the profile's first pool
//! (plain, or with a backfill), backfills that game servers acknowledge, and a record of every
//! request it received.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::proto::backend::*;
use crate::proto::backend_grpc::{create_backend_service, BackendService};
use crate::proto::messages::{Match, SearchFields, Ticket};
use crate::sync::lock;
use futures_util::{SinkExt, TryFutureExt};

pub use super::om_state::{
    fits, BackfillRecord, IssuedMatch, MatchKind, OmFaults, OmState, PoolTicket, TicketStatus,
    MATCH_SIZE,
};
use super::server::Served;
use super::tls::ServerTls;
use grpcio::{
    RpcContext, RpcStatus, RpcStatusCode, ServerCredentials, ServerStreamingSink, UnarySink,
    WriteFlags,
};

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
        lock(&self.state)
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

impl Backend {
    /// Matches for the request's profile, and the code to fail the stream with after them.
    fn make_matches(&self, request: &FetchMatchesRequest) -> (Vec<Match>, Option<RpcStatusCode>) {
        let mut state = lock(&self.state);
        if state.keep_requests {
            state.fetches.push(request.clone());
            let host = request.get_config().get_host().to_string();
            state.fetch_times.push((Instant::now(), host));
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
        let mut guard = lock(&self.state);
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
        lock(&self.state).faults.hang_writes
    }

    /// Answers a write at once, or after `faults.slow_writes` (from a thread of its own, so that
    /// the server goes on serving meanwhile).
    fn reply_in_time<T: Send + 'static>(
        &self,
        ctx: RpcContext,
        sink: UnarySink<T>,
        result: Result<T, RpcStatus>,
    ) {
        let delay = lock(&self.state).faults.slow_writes;
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
        lock(&self.state).hung.push(Box::new(sink));
    }

    fn assign(&self, request: AssignTicketsRequest) -> Result<AssignTicketsResponse, RpcStatus> {
        let mut guard = lock(&self.state);
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

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;
    use std::time::Duration;

    use grpcio::{CallOption, ChannelBuilder, Environment};

    use super::*;
    use crate::proto::backend_grpc::BackendServiceClient;

    /// A test whose assertion fails while it holds the double's state must still get an answer
    /// from the double, and the double must still stop when the test unwinds: a poisoned state
    /// would kill its gRPC thread, and a server without one never finishes its shutdown.
    #[test]
    fn a_panic_while_holding_the_state_leaves_the_double_answering() {
        let om = FakeOpenMatch::start();
        let failed_assertion = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _state = om.state();
            panic!("an assertion fails while the test holds the state");
        }));
        assert!(failed_assertion.is_err());
        let channel = ChannelBuilder::new(Arc::new(Environment::new(1)))
            .connect(&format!("127.0.0.1:{}", om.port));
        let answer = BackendServiceClient::new(channel).release_tickets_opt(
            &ReleaseTicketsRequest::default(),
            CallOption::default().timeout(Duration::from_secs(5)),
        );
        if answer.is_err() {
            // Its gRPC thread is gone, so it could not shut down: leave it, to report the failure.
            std::mem::forget(om);
        }
        assert!(answer.is_ok(), "the double answered: {answer:?}");
    }
}
