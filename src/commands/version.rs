//! `kiln version` (and `kiln --version`).

use crate::exit::{CliError, Status};

/// `Kiln v0.1.0`, with the git commit `build.rs` embedded (when built from git or with
/// `KILN_GIT_COMMIT` set).
pub fn version_string() -> String {
    match option_env!("KILN_GIT_COMMIT") {
        Some(commit) if !commit.is_empty() => format!("Kiln v{} ({commit})", kiln_core::VERSION),
        _ => format!("Kiln v{}", kiln_core::VERSION),
    }
}

pub fn run() -> Result<Status, CliError> {
    println!("{}", version_string());
    Ok(Status::Success)
}
