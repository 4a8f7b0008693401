//! What can go wrong between cutover and a backend, classified where it happens: each error
//! knows its metric reason, its status and `x-cutover-error` value, and whom to blame, so a
//! client abort never counts toward the guard and fallback can tell "never reached the
//! backend" from "failed mid-response".

/// Why a backend gave no response; the `reason` label of upstream failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Protocol = 3,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Connect,
        FailureReason::Timeout,
        FailureReason::Reset,
        FailureReason::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Connect => "connect",
            FailureReason::Timeout => "timeout",
            FailureReason::Reset => "reset",
            FailureReason::Protocol => "protocol",
        }
    }
}

/// Why a backend gave no usable response. Blame is on the backend for all but `ClientBody` and `BadTarget`.
#[derive(Clone, Debug)]
pub enum ProxyError {
    /// The backend refused or could not be reached.
    Connect(String),
    ConnectTimeout,
    /// No response head within `request_timeout`.
    Timeout,
    /// The connection broke before a response head arrived.
    Reset(String),
    /// The backend answered with something that is not valid HTTP.
    Protocol(String),
    /// The response body stopped for longer than `read_timeout`.
    BodyTimeout,
    /// The connection broke before the response body was complete.
    BodyReset(String),
    /// The client's own request body failed while being relayed.
    ClientBody,
    /// The request target cannot be rewritten into one for this backend.
    BadTarget,
}

impl ProxyError {
    /// True when the backend gave no response at all (connect refused, connect timeout, or
    /// reset before a response head): an idempotent request may be replayed elsewhere.
    pub fn allows_fallback(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_) | ProxyError::ConnectTimeout | ProxyError::Reset(_)
        )
    }

    /// The failure reason, or `None` when the client is to blame.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            ProxyError::Connect(_) => Some(FailureReason::Connect),
            ProxyError::ConnectTimeout | ProxyError::Timeout | ProxyError::BodyTimeout => {
                Some(FailureReason::Timeout)
            }
            ProxyError::Reset(_) | ProxyError::BodyReset(_) => Some(FailureReason::Reset),
            ProxyError::Protocol(_) => Some(FailureReason::Protocol),
            ProxyError::ClientBody | ProxyError::BadTarget => None,
        }
    }

    /// Value of the `x-cutover-error` header.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) => "connect",
            ProxyError::ConnectTimeout => "connect-timeout",
            ProxyError::Timeout | ProxyError::BodyTimeout => "timeout",
            ProxyError::Reset(_) | ProxyError::BodyReset(_) => "reset",
            ProxyError::Protocol(_) => "protocol",
            ProxyError::ClientBody => "client-body",
            ProxyError::BadTarget => "bad-target",
        }
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            ProxyError::ConnectTimeout | ProxyError::Timeout | ProxyError::BodyTimeout => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ClientBody | ProxyError::BadTarget => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ProxyError::Connect(cause) => format!("cannot connect ({cause})"),
            ProxyError::ConnectTimeout => "connect timed out".to_owned(),
            ProxyError::Timeout => "no response within request_timeout".to_owned(),
            ProxyError::Reset(cause) => format!("connection lost before a response ({cause})"),
            ProxyError::Protocol(cause) => format!("invalid response ({cause})"),
            ProxyError::BodyTimeout => "response body stalled past read_timeout".to_owned(),
            ProxyError::BodyReset(cause) => format!("connection lost mid-body ({cause})"),
            ProxyError::ClientBody => "request body failed".to_owned(),
            ProxyError::BadTarget => "invalid request target".to_owned(),
        }
    }

    /// What a response body's failure means once its head was relayed.
    pub(crate) fn from_body(err: &hyper::Error) -> ProxyError {
        if err.is_parse() {
            ProxyError::Protocol(err.to_string())
        } else {
            ProxyError::BodyReset(err.to_string())
        }
    }

    /// What a failed exchange on an established connection means. The client's body failing
    /// is a user error in hyper's terms; anything else before a response head is the backend's.
    pub(crate) fn from_hyper(err: &hyper::Error) -> ProxyError {
        if err.is_user() {
            ProxyError::ClientBody
        } else if err.is_parse() || err.is_parse_status() {
            ProxyError::Protocol(err.to_string())
        } else {
            ProxyError::Reset(err.to_string())
        }
    }
}
