//! Running `ansible-playbook` and `ansible-galaxy` on the machine running Kiln: each in its own
//! process group, output lines streamed as `Output` events, the whole group stopped when the build
//! is cancelled (SIGTERM, then SIGKILL) and killed when the run is dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use kiln_core::process::{stream_output, GroupGuard};
use kiln_core::runner::BuildCtx;
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
    let mut guard = GroupGuard::new(child.id());

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = async {
        stream_output(&ctx.events, TYPE_NAME, stdout, stderr).await?;
        child.wait().await
    };
    let status = tokio::select! {
        status = finished => status.map_err(|source| AnsibleError::Output { what: what(), source })?,
        _ = ctx.cancel.cancel.cancelled() => {
            guard.stop(&mut child, &ctx.cancel).await;
            return Err(AnsibleError::Cancelled { what: what() });
        }
    };
    guard.disarm();

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
