//! Error kinds that decide the exit code.
//!
//! Everything is an `anyhow::Error`; a [`UsageError`] anywhere in the chain means the user
//! asked for something invalid (exit 2), anything else is a runtime failure (exit 1).

use std::fmt;

/// Invalid input: a config value, flag, name or path the user must fix. Exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds a usage error (exit code 2) from a message that names the problem and the fix.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Returns a usage error from the current function.
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => { return Err($crate::error::usage(format!($($arg)*))) };
}

/// The process exit code for an error: 2 for usage errors, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else {
        1
    }
}
