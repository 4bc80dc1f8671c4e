//! The one error type of the core, and the one table that gives each kind its HTTP status and
//! gRPC code, so the two doors can never disagree. An error records who caused it (client,
//! upstream provider, the gateway) and whether a retry on another deployment may help.

use std::time::Duration;

use http::StatusCode;

/// What went wrong, as the client should hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    BadRequest,
    /// No key, or an unknown one.
    Unauthenticated,
    /// The key may not do this.
    PermissionDenied,
    /// Unknown model group (or path).
    NotFound,
    /// Body over the size limit.
    PayloadTooLarge,
    /// Rate limited (ours or the provider's).
    RateLimited,
    /// The key has spent its budget (LiteLLM answers 400 `budget_exceeded`).
    BudgetExceeded,
    /// A deployment is misconfigured (e.g. its key variable is unset).
    Config,
    /// A bug in the gateway.
    Internal,
    /// The provider answered garbage or cut its stream.
    BadGateway,
    /// No healthy deployment, or the provider is down.
    Unavailable,
    /// The provider did not answer in time.
    Timeout,
    /// The client went away or its deadline passed.
    Cancelled,
    /// The provider's own error, passed on with its HTTP status.
    Upstream(u16),
}

impl ErrorKind {
    /// The single table: HTTP status and gRPC code for each kind.
    pub fn codes(self) -> (StatusCode, tonic::Code) {
        match self {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
            ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, tonic::Code::NotFound),
            ErrorKind::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::InvalidArgument)
            }
            ErrorKind::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
            ),
            ErrorKind::BudgetExceeded => (StatusCode::BAD_REQUEST, tonic::Code::ResourceExhausted),
            ErrorKind::Config => (
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::FailedPrecondition,
            ),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
            ErrorKind::BadGateway => (StatusCode::BAD_GATEWAY, tonic::Code::Unavailable),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded),
            // 499 is nginx's "client closed request"; the client never reads it.
            ErrorKind::Cancelled => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                tonic::Code::Cancelled,
            ),
            ErrorKind::Upstream(status) => {
                let http = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                (http, grpc_code_for_http(status))
            }
        }
    }

    /// OpenAI's error `type` for this kind.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Config | ErrorKind::Internal => "internal_error",
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::Cancelled => "api_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Upstream(s) => match s {
                400 | 404 | 409 | 413 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                _ => "api_error",
            },
        }
    }

    /// Whether another attempt (on this or another deployment) may succeed: connect errors,
    /// timeouts, 408/409/429/5xx/529. Never a client's own mistake.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::Timeout => true,
            ErrorKind::Upstream(s) => matches!(s, 408 | 409 | 429 | 500..=599),
            ErrorKind::BadRequest
            | ErrorKind::Unauthenticated
            | ErrorKind::PermissionDenied
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RateLimited
            | ErrorKind::BudgetExceeded
            | ErrorKind::Config
            | ErrorKind::Internal
            | ErrorKind::Cancelled => false,
        }
    }
}

/// gRPC's code for a provider's HTTP status (Google's HTTP-to-gRPC mapping, with 5xx as
/// UNAVAILABLE since for a gateway they mean the provider is unwell).
fn grpc_code_for_http(status: u16) -> tonic::Code {
    match status {
        400 | 413 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        408 | 504 => tonic::Code::DeadlineExceeded,
        409 => tonic::Code::Aborted,
        429 => tonic::Code::ResourceExhausted,
        501 => tonic::Code::Unimplemented,
        500..=599 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

/// An error from the core: its kind, a message for the client, and OpenAI's optional `param`
/// and `code`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// A provider's or limiter's `retry-after`, passed on to the client.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unauthenticated, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadGateway, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn http_status(&self) -> StatusCode {
        self.kind.codes().0
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.kind.codes().1
    }

    /// OpenAI's `code` field: the explicit code, else a stable name for the kind.
    pub fn code_str(&self) -> String {
        self.code
            .clone()
            .unwrap_or_else(|| self.http_status().as_u16().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_matching_http_and_grpc_codes() {
        let rows = [
            (ErrorKind::BadRequest, 400, tonic::Code::InvalidArgument),
            (
                ErrorKind::Unauthenticated,
                401,
                tonic::Code::Unauthenticated,
            ),
            (
                ErrorKind::PermissionDenied,
                403,
                tonic::Code::PermissionDenied,
            ),
            (ErrorKind::NotFound, 404, tonic::Code::NotFound),
            (
                ErrorKind::PayloadTooLarge,
                413,
                tonic::Code::InvalidArgument,
            ),
            (ErrorKind::RateLimited, 429, tonic::Code::ResourceExhausted),
            (
                ErrorKind::BudgetExceeded,
                400,
                tonic::Code::ResourceExhausted,
            ),
            (ErrorKind::Config, 500, tonic::Code::FailedPrecondition),
            (ErrorKind::Internal, 500, tonic::Code::Internal),
            (ErrorKind::BadGateway, 502, tonic::Code::Unavailable),
            (ErrorKind::Unavailable, 503, tonic::Code::Unavailable),
            (ErrorKind::Timeout, 504, tonic::Code::DeadlineExceeded),
            (
                ErrorKind::Upstream(429),
                429,
                tonic::Code::ResourceExhausted,
            ),
            (ErrorKind::Upstream(400), 400, tonic::Code::InvalidArgument),
            (ErrorKind::Upstream(503), 503, tonic::Code::Unavailable),
        ];
        for (kind, http, grpc) in rows {
            assert_eq!(
                kind.codes(),
                (StatusCode::from_u16(http).unwrap(), grpc),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn only_upstream_trouble_is_retryable() {
        assert!(ErrorKind::Upstream(429).is_retryable());
        assert!(ErrorKind::Upstream(529).is_retryable());
        assert!(ErrorKind::Timeout.is_retryable());
        assert!(!ErrorKind::Upstream(400).is_retryable());
        assert!(!ErrorKind::BadRequest.is_retryable());
    }
}
