//! How an operation on a system failed, which decides what the engine does next.

use serde::{Deserialize, Serialize};

/// How an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The connection broke or could not be made: reconnect, then retry the cell.
    ConnectionLost,
    /// dedup-lab refused to touch something it does not own, or that another live run holds:
    /// never retried.
    Unsafe,
    /// Anything else: the attempt failed.
    Failed,
}

/// An adapter error with its kind.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct SysError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, with the system's own message.
    pub message: String,
}

impl SysError {
    /// A failure that is not about the connection.
    pub fn failed(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// A broken or impossible connection.
    pub fn connection(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::ConnectionLost,
            message: message.into(),
        }
    }

    /// A refusal to touch something dedup-lab does not own.
    pub fn unsafe_namespace(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::Unsafe,
            message: message.into(),
        }
    }

    /// A driver's error in `context` with all its causes, as a lost connection when `lost`.
    /// Adapters decide `lost` from the driver's error codes and keep the message for the
    /// record.
    pub fn from_driver(
        system: &str,
        context: &str,
        e: &(dyn std::error::Error + 'static),
        lost: bool,
    ) -> Self {
        let message = format!("{system}: {context}: {}", error_chain(e));
        SysError {
            kind: if lost {
                ErrorKind::ConnectionLost
            } else {
                ErrorKind::Failed
            },
            message,
        }
    }
}

/// Result of an adapter operation.
pub type SysResult<T> = Result<T, SysError>;

/// An error with all its causes, `outer: inner: innermost`, skipping causes the outer
/// message already contains (drivers differ in whether `Display` includes the source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Maps any displayable error to a [`ErrorKind::Failed`] error with context.
pub fn failed<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> SysError + '_ {
    move |e| SysError::failed(format!("{context}: {e}"))
}
