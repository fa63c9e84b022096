//! Running `ansible-playbook` and `ansible-galaxy` on the machine running Kiln: each in its own
//! process group, output lines streamed as `Output` events, the whole group killed when the build
//! is cancelled or the run is dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use kiln_core::event::OutputStream;
use kiln_core::runner::BuildCtx;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::{AnsibleError, TYPE_NAME};

/// One program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    pub program: String,
    pub args: Vec<OsString>,
    /// Added to Kiln's own environment.
    pub env: BTreeMap<String, String>,
    /// For errors, e.g. "playbook `/src/site.yml`".
    pub what: String,
}

/// Kills the process group when dropped, unless disarmed.
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; ESRCH (group gone) is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `invocation` to its end; any exit code but 0 is an error.
pub(crate) async fn run(ctx: &BuildCtx, invocation: &Invocation) -> Result<(), AnsibleError> {
    let what = || invocation.what.clone();
    let mut command = Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .envs(&invocation.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            AnsibleError::NotInstalled {
                program: invocation.program.clone(),
            }
        } else {
            AnsibleError::Spawn {
                program: invocation.program.clone(),
                source,
            }
        }
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|pid| pid as i32),
    };

    let stdout = child.stdout.take().map(BufReader::new);
    let stderr = child.stderr.take().map(BufReader::new);
    let finished = async {
        stream_output(ctx, stdout, stderr).await?;
        child.wait().await
    };
    let status = tokio::select! {
        status = finished => status.map_err(|source| AnsibleError::Output { what: what(), source })?,
        // `guard` kills the group on the way out.
        _ = ctx.cancel.cancel.cancelled() => return Err(AnsibleError::Cancelled { what: what() }),
    };
    guard.pgid = None;

    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(AnsibleError::ExitCode {
            program: invocation.program.clone(),
            what: what(),
            code,
        }),
        (None, signal) => Err(AnsibleError::Signal {
            program: invocation.program.clone(),
            what: what(),
            signal: signal.unwrap_or_default(),
        }),
    }
}

/// Emits stdout and stderr lines as `Output` events as they arrive, until both streams close.
async fn stream_output<O, E>(
    ctx: &BuildCtx,
    stdout: Option<BufReader<O>>,
    stderr: Option<BufReader<E>>,
) -> std::io::Result<()>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let (mut out, mut err) = (stdout, stderr);
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    while out.is_some() || err.is_some() {
        tokio::select! {
            read = read_line(&mut out, &mut out_buf), if out.is_some() => {
                if !emit_line(ctx, OutputStream::Stdout, read?, &mut out_buf) {
                    out = None;
                }
            }
            read = read_line(&mut err, &mut err_buf), if err.is_some() => {
                if !emit_line(ctx, OutputStream::Stderr, read?, &mut err_buf) {
                    err = None;
                }
            }
        }
    }
    Ok(())
}

async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut Option<BufReader<R>>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read_until(b'\n', buf).await,
        None => Ok(0),
    }
}

/// Emits what `buf` holds as one line; returns false at end of stream. `read_until` keeps
/// partial reads in `buf` when its future is dropped, so no output is lost to `select!`.
fn emit_line(ctx: &BuildCtx, stream: OutputStream, read: usize, buf: &mut Vec<u8>) -> bool {
    if !buf.is_empty() {
        let text = String::from_utf8_lossy(buf);
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        ctx.events.output(TYPE_NAME, stream, line);
        buf.clear();
    }
    read > 0
}
