//! The way into a machine being built: the `Communicator` trait and its implementations.
//!
//! Provisioners only ever see `dyn Communicator`. Builders pick the implementation (SSH, QEMU guest
//! agent, docker exec, none) and hand it over once the machine is reachable. This crate knows
//! nothing about templates, events or the CLI: output lines go to an [`OutputSink`] the caller
//! supplies.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

mod none;
pub mod ssh;

pub use none::NoneCommunicator;

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives a remote command's output, one line at a time (without the trailing newline).
pub trait OutputSink: Send {
    fn line(&mut self, stream: Stream, line: &str);
}

impl<F: FnMut(Stream, &str) + Send> OutputSink for F {
    fn line(&mut self, stream: Stream, line: &str) {
        self(stream, line)
    }
}

/// A command to run on the machine, as a shell command line.
#[derive(Debug, Clone, Default)]
pub struct RemoteCommand {
    /// The command line, run by the remote shell.
    pub command: String,
    /// Extra environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Working directory; the communicator's default when `None`.
    pub workdir: Option<String>,
    /// Ask for a pseudo-terminal (SSH `ssh_pty`).
    pub pty: bool,
}

/// How a remote command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The command exited with this code.
    Code(i32),
    /// The command was killed by a signal (name or number as the remote side reported it).
    Signal(i32),
    /// The connection dropped before an exit status arrived (e.g. the command rebooted the machine).
    Disconnected,
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// Ownership and mode for uploaded files.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// File mode, e.g. `0o644`; the communicator's default when `None`.
    pub mode: Option<u32>,
    /// `user[:group]` to own the file; unchanged when `None`.
    pub owner: Option<String>,
}

/// What to upload.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// A local file.
    File(PathBuf),
    /// Bytes held in memory (e.g. a rendered script or `content`).
    Bytes(Vec<u8>),
}

/// Why a communicator operation failed. Disconnects are distinct from failures so that callers
/// can tell an expected reboot from a broken transfer.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("the connection to the machine was lost")]
    Disconnected,
    #[error("the {communicator} communicator cannot {operation}")]
    Unsupported {
        communicator: &'static str,
        operation: &'static str,
    },
    #[error("cannot read local path `{}`", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(String),
    /// Connecting (or reconnecting) to the machine failed for good.
    #[error("cannot connect to the machine")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The way into a machine. One instance per build, shared by every provisioner.
#[async_trait]
pub trait Communicator: Send + Sync {
    /// Short name for messages: `ssh`, `qga`, `docker`, `none`.
    fn kind(&self) -> &'static str;

    /// Runs a command, streaming its output lines to `out`, and returns how it ended.
    async fn exec(
        &self,
        cmd: &RemoteCommand,
        out: &mut dyn OutputSink,
    ) -> Result<ExitStatus, CommError>;

    /// Uploads a single file to `dest` (a file path on the machine).
    async fn upload(
        &self,
        src: UploadSource,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError>;

    /// Uploads the contents of the local directory `src` into the directory `dest`.
    async fn upload_dir(
        &self,
        src: &Path,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError>;

    /// Downloads the remote file `src` to the local path `dest`.
    async fn download(&self, src: &str, dest: &Path) -> Result<(), CommError>;

    /// Downloads the contents of the remote directory `src` into the local directory `dest`.
    async fn download_dir(&self, src: &str, dest: &Path) -> Result<(), CommError>;

    /// Re-establishes the connection after an expected disconnect (e.g. a reboot).
    async fn reconnect(&self) -> Result<(), CommError> {
        Ok(())
    }
}
