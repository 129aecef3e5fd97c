//! The Open Match backend client: fetch matches, assign tickets, release tickets.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use grpcio::{CallOption, Channel, Environment, RpcStatusCode};

use crate::config::Endpoint;
use crate::proto::backend::{
    AssignTicketsRequest, AssignmentFailure, AssignmentGroup, FetchMatchesRequest, FunctionConfig,
    FunctionConfig_Type, ReleaseTicketsRequest,
};
use crate::proto::backend_grpc::BackendServiceClient;
use crate::proto::messages::{Assignment, Match, MatchProfile};
use crate::rpc::{channel_builder, RpcError};
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsMaterial};

/// Opens the (lazily connecting) channel to the Open Match backend, with TLS when configured.
pub fn connect(env: Arc<Environment>, backend: &Endpoint, tls: Option<&TlsMaterial>) -> Channel {
    let builder = channel_builder(env);
    let target = backend.target();
    match tls {
        Some(material) => builder
            .set_credentials(tls::channel_credentials(material))
            .connect(&target),
        None => builder.connect(&target),
    }
}

/// Whether a failed AssignTickets or ReleaseTickets is worth another attempt.
pub fn is_retryable(code: RpcStatusCode) -> bool {
    matches!(
        code,
        RpcStatusCode::UNAVAILABLE | RpcStatusCode::DEADLINE_EXCEEDED
    )
}

/// How a FetchMatches call ended.
#[derive(Debug)]
pub struct FetchOutcome {
    /// Matches received (and handed on) before the stream ended.
    pub received: usize,
    /// `None` when the stream ended with OK.
    pub error: Option<RpcError>,
}

/// A client of `openmatch.BackendService`.
#[derive(Clone)]
pub struct OpenMatchClient {
    client: BackendServiceClient,
    function: FunctionConfig,
}

impl OpenMatchClient {
    /// A client on `channel` that asks Open Match to run the match function at `match_function`.
    pub fn new(channel: Channel, match_function: &Endpoint) -> OpenMatchClient {
        OpenMatchClient {
            client: BackendServiceClient::new(channel),
            function: function_config(match_function),
        }
    }

    /// Calls FetchMatches for `profile` and hands each match to `on_match` as it arrives. Matches
    /// received before a failure are handed on too. A forced shutdown cancels the stream.
    pub fn fetch_matches(
        &self,
        profile: &MatchProfile,
        timeout: Duration,
        shutdown: &Shutdown,
        mut on_match: impl FnMut(Match),
    ) -> FetchOutcome {
        let mut request = FetchMatchesRequest::new();
        request.set_config(self.function.clone());
        request.set_profile(profile.clone());
        let mut stream = match self
            .client
            .fetch_matches_opt(&request, CallOption::default().timeout(timeout))
        {
            Ok(stream) => stream,
            Err(error) => {
                return FetchOutcome {
                    received: 0,
                    error: Some(error.into()),
                }
            }
        };
        let mut received = 0;
        let mut error: Option<RpcError> = None;
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx));
            match shutdown.block_on_unless_forced(next) {
                Some(Some(Ok(mut response))) => {
                    received += 1;
                    on_match(response.take_field_match());
                }
                // grpcio reports a failed call's status before the messages that arrived ahead
                // of it; keep reading after the first error so that those matches are not lost.
                Some(Some(Err(failure))) if error.is_none() => error = Some(failure.into()),
                Some(Some(Err(_))) | Some(None) => break,
                None => {
                    stream.cancel();
                    error.get_or_insert(RpcError::new(
                        RpcStatusCode::CANCELLED,
                        "cancelled by shutdown",
                    ));
                    break;
                }
            }
        }
        FetchOutcome { received, error }
    }

    /// Assigns `connection` to all `ticket_ids` in one AssignmentGroup; returns per-ticket failures.
    pub fn assign(
        &self,
        ticket_ids: &[String],
        connection: &str,
        timeout: Duration,
    ) -> Result<Vec<AssignmentFailure>, RpcError> {
        let request = assign_request(ticket_ids, connection);
        let mut response = self
            .client
            .assign_tickets_opt(&request, CallOption::default().timeout(timeout))?;
        Ok(response.take_failures().into_vec())
    }

    /// Returns `ticket_ids` to the pool so they can be matched again at once.
    pub fn release(&self, ticket_ids: &[String], timeout: Duration) -> Result<(), RpcError> {
        let mut request = ReleaseTicketsRequest::new();
        request.set_ticket_ids(ticket_ids.to_vec().into());
        self.client
            .release_tickets_opt(&request, CallOption::default().timeout(timeout))?;
        Ok(())
    }
}

/// The FunctionConfig sent with every FetchMatches: the match function's host and gRPC port.
pub fn function_config(match_function: &Endpoint) -> FunctionConfig {
    let mut config = FunctionConfig::new();
    config.set_host(match_function.host.clone());
    config.set_port(i32::from(match_function.port));
    config.set_field_type(FunctionConfig_Type::GRPC);
    config
}

/// One AssignmentGroup holding every ticket of a match.
pub fn assign_request(ticket_ids: &[String], connection: &str) -> AssignTicketsRequest {
    let mut assignment = Assignment::new();
    assignment.set_connection(connection.to_string());
    let mut group = AssignmentGroup::new();
    group.set_ticket_ids(ticket_ids.to_vec().into());
    group.set_assignment(assignment);
    let mut request = AssignTicketsRequest::new();
    request.mut_assignments().push(group);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_config_names_host_port_and_grpc() {
        let config = function_config(&Endpoint {
            host: "mmf.example".into(),
            port: 50502,
        });
        assert_eq!(config.get_host(), "mmf.example");
        assert_eq!(config.get_port(), 50502);
        assert_eq!(config.get_field_type(), FunctionConfig_Type::GRPC);
    }

    #[test]
    fn assign_request_is_one_group_with_every_ticket() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let request = assign_request(&ids, "10.0.0.1:7000");
        assert_eq!(request.get_assignments().len(), 1);
        let group = &request.get_assignments()[0];
        assert_eq!(group.get_ticket_ids(), &ids[..]);
        assert_eq!(group.get_assignment().get_connection(), "10.0.0.1:7000");
    }
}
