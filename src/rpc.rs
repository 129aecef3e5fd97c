//! What every gRPC client shares: how channels are built, and one error type for every call,
//! carrying the status code and the server's message.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use grpcio::{ChannelBuilder, Environment, RpcStatusCode};

/// First pause before reconnecting a channel.
const INITIAL_RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts (gRPC's own default is two minutes).
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// A channel builder with our user agent and reconnection backoff (200 ms doubling to 5 s). No
/// keepalive pings: Open Match and Agones both punish frequent pings.
pub fn channel_builder(env: Arc<Environment>) -> ChannelBuilder {
    ChannelBuilder::new(env)
        .primary_user_agent(crate::USER_AGENT)
        .initial_reconnect_backoff(INITIAL_RECONNECT_BACKOFF)
        .max_reconnect_backoff(MAX_RECONNECT_BACKOFF)
}

/// The non-standard status code Agones returns when a request fails validation.
pub const AGONES_VALIDATION_ERROR: i32 = 422;

/// A failed gRPC call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// The gRPC status code (or Agones' 422).
    pub code: RpcStatusCode,
    /// The status message, or a description of a client-side failure.
    pub message: String,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: RpcStatusCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl From<grpcio::Error> for RpcError {
    fn from(error: grpcio::Error) -> RpcError {
        match error {
            grpcio::Error::RpcFailure(status) => {
                RpcError::new(status.code(), status.message().to_string())
            }
            grpcio::Error::RemoteStopped => {
                RpcError::new(RpcStatusCode::UNAVAILABLE, "remote stopped")
            }
            other => RpcError::new(RpcStatusCode::UNKNOWN, other.to_string()),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", code_name(self.code), self.message)
    }
}

impl std::error::Error for RpcError {}

/// The canonical upper-case name of a status code (`UNAVAILABLE`), or its number.
pub fn code_name(code: RpcStatusCode) -> String {
    let name = match code {
        RpcStatusCode::OK => "OK",
        RpcStatusCode::CANCELLED => "CANCELLED",
        RpcStatusCode::UNKNOWN => "UNKNOWN",
        RpcStatusCode::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        RpcStatusCode::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        RpcStatusCode::NOT_FOUND => "NOT_FOUND",
        RpcStatusCode::ALREADY_EXISTS => "ALREADY_EXISTS",
        RpcStatusCode::PERMISSION_DENIED => "PERMISSION_DENIED",
        RpcStatusCode::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        RpcStatusCode::FAILED_PRECONDITION => "FAILED_PRECONDITION",
        RpcStatusCode::ABORTED => "ABORTED",
        RpcStatusCode::OUT_OF_RANGE => "OUT_OF_RANGE",
        RpcStatusCode::UNIMPLEMENTED => "UNIMPLEMENTED",
        RpcStatusCode::INTERNAL => "INTERNAL",
        RpcStatusCode::UNAVAILABLE => "UNAVAILABLE",
        RpcStatusCode::DATA_LOSS => "DATA_LOSS",
        RpcStatusCode::UNAUTHENTICATED => "UNAUTHENTICATED",
        other if i32::from(other) == AGONES_VALIDATION_ERROR => "422 (Agones validation error)",
        other => return format!("code {}", i32::from(other)),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_standard_and_agones_codes() {
        assert_eq!(
            code_name(RpcStatusCode::RESOURCE_EXHAUSTED),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(
            code_name(RpcStatusCode::from(AGONES_VALIDATION_ERROR)),
            "422 (Agones validation error)"
        );
        assert_eq!(code_name(RpcStatusCode::from(99)), "code 99");
    }

    #[test]
    fn keeps_status_code_and_message() {
        let status = grpcio::RpcStatus::with_message(RpcStatusCode::ABORTED, "contention".into());
        let error = RpcError::from(grpcio::Error::RpcFailure(status));
        assert_eq!(error.to_string(), "ABORTED: contention");
    }
}
