//! Local processes run for a build (`shell-local`, `ansible-playbook`, later `qemu`,
//! `qemu-img`): a guard that kills a child's whole process group, and the streaming of its
//! output lines as `Output` events.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;

use crate::event::{EventSink, OutputStream};
use crate::runner::Cancel;

/// How long a cancelled build's local process group gets between SIGTERM and SIGKILL (unless
/// the build is hurried first), for [`GroupGuard::stop`].
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Kills a process group when dropped, unless disarmed: the last resort when the future that
/// runs a child is dropped (a timeout, a cancelled build) instead of stopping it itself. Spawn the
/// child with `process_group(0)` so that its pid is its group id.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    /// Guards the group led by `pid` (`Child::id()`; `None` when the child has already exited).
    pub fn new(pid: Option<u32>) -> Self {
        GroupGuard {
            pgid: pid.map(|p| p as i32),
        }
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; ESRCH (group gone) is fine.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }

    /// Stops a cancelled child: SIGTERM to the whole group, then SIGKILL when the build is
    /// hurried, after [`STOP_GRACE`], or once the leader has exited (for members that ignored
    /// SIGTERM). Returns when the leader has been reaped.
    pub async fn stop(&self, child: &mut Child, cancel: &Cancel) {
        self.signal(libc::SIGTERM);
        tokio::select! {
            _ = child.wait() => {}
            _ = cancel.hurry.cancelled() => {}
            _ = tokio::time::sleep(STOP_GRACE) => {}
        }
        self.signal(libc::SIGKILL);
        let _ = child.wait().await;
    }

    /// The child ended by itself: dropping the guard must not signal a group id that may since
    /// have been reused.
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Emits stdout and stderr lines as `Output` events from `source` as they arrive, until both
/// streams close. A final line without a newline is emitted too; `\r\n` endings are trimmed.
pub async fn stream_output<O, E>(
    events: &EventSink,
    source: &str,
    stdout: Option<O>,
    stderr: Option<E>,
) -> std::io::Result<()>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let (mut out, mut err) = (stdout.map(BufReader::new), stderr.map(BufReader::new));
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let emit = |stream, read: usize, buf: &mut Vec<u8>| {
        if !buf.is_empty() {
            let text = String::from_utf8_lossy(buf);
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            events.output(source, stream, line);
            buf.clear();
        }
        read > 0
    };
    // `read_until` keeps partial reads in its buffer when its future is dropped by `select!`, so
    // no output is lost.
    while out.is_some() || err.is_some() {
        tokio::select! {
            read = read_line(&mut out, &mut out_buf), if out.is_some() => {
                if !emit(OutputStream::Stdout, read?, &mut out_buf) {
                    out = None;
                }
            }
            read = read_line(&mut err, &mut err_buf), if err.is_some() => {
                if !emit(OutputStream::Stderr, read?, &mut err_buf) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Redactor};

    #[tokio::test]
    async fn streams_both_outputs_and_a_last_partial_line() {
        let (sink, mut rx) = EventSink::channel(uuid::Uuid::nil(), Redactor::default());
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "echo one; echo two >&2; printf 'three\\r\\nfour'"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        stream_output(&sink, "test", child.stdout.take(), child.stderr.take())
            .await
            .unwrap();
        child.wait().await.unwrap();
        let mut lines = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let EventKind::Output { stream, line, .. } = ev.kind {
                lines.push((stream, line));
            }
        }
        let stdout: Vec<_> = lines
            .iter()
            .filter(|l| l.0 == OutputStream::Stdout)
            .map(|l| l.1.as_str())
            .collect();
        assert_eq!(stdout, ["one", "three", "four"]);
        assert!(lines.contains(&(OutputStream::Stderr, "two".to_string())));
    }

    #[tokio::test]
    async fn guard_kills_the_whole_group() {
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1000 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let guard = GroupGuard::new(child.id());
        drop(guard);
        let status = child.wait().await.unwrap();
        assert!(!status.success());
    }
}
