//! Exit statuses (documented in `docs/cli.md`) and the errors commands return.

use std::error::Error;
use std::io::Write;

/// The process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success = 0,
    /// A build failed, or an internal error.
    Failed = 1,
    /// Bad usage or an invalid template.
    Usage = 2,
    /// `fmt -check` found files that are not formatted.
    Unformatted = 3,
    /// Interrupted (SIGINT or SIGTERM).
    Interrupted = 130,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The problem has been shown already (diagnostics); only the status is left.
    #[error("already reported")]
    Reported(Status),
    /// A mistake of the user's: a missing file, a bad argument.
    #[error("{message}")]
    User {
        message: String,
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
    /// A bug in Kiln.
    #[error("internal error, please report")]
    Internal(#[source] Box<dyn Error + Send + Sync>),
}

impl CliError {
    pub fn user(
        message: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        CliError::User {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn status(&self) -> Status {
        match self {
            CliError::Reported(s) => *s,
            CliError::User { .. } => Status::Usage,
            CliError::Internal(_) => Status::Failed,
        }
    }

    /// Prints the error and its causes, one per line, to stderr.
    pub fn report(&self) {
        if let CliError::Reported(_) = self {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "error: {self}");
        let mut cause = self.source();
        while let Some(c) = cause {
            let _ = writeln!(err, "  caused by: {c}");
            cause = c.source();
        }
    }
}
