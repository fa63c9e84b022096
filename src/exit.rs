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
        let _ = std::io::stderr().write_all(self.chain().as_bytes());
    }

    /// `error: ...` and one `  caused by: ...` line per cause.
    fn chain(&self) -> String {
        let mut text = format!("error: {self}\n");
        let mut cause = self.source();
        while let Some(c) = cause {
            text.push_str(&format!("  caused by: {c}\n"));
            cause = c.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open `disk.qcow2`")]
    struct Open(#[source] std::io::Error);

    #[test]
    fn chain_has_one_cause_per_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = CliError::user("cannot start the build", Open(io));
        assert_eq!(err.status(), Status::Usage);
        assert_eq!(
            err.chain(),
            "error: cannot start the build\n  caused by: cannot open `disk.qcow2`\n  caused by: no such file\n"
        );
    }

    #[test]
    fn internal_errors_ask_for_a_report() {
        let err = CliError::Internal("boom".into());
        assert_eq!(err.status(), Status::Failed);
        assert!(err
            .chain()
            .starts_with("error: internal error, please report\n"));
    }
}
