//! The QEMU guest-agent communicator (`communicator = "qga"`): commands, uploads and downloads
//! over virtio-serial through the guest's qemu-guest-agent, with the `qapi` crate's QGA types.
//!
//! One agent connection serves the VM's whole life: the guest's qemu-guest-agent 7.2 spins at
//! 100 % CPU after a host client disconnects. The protocol has no command ids, so commands are
//! never abandoned half-way (no timeouts around them) and run one at a time.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use kiln_comm::{
    CommError, Communicator, ExitStatus, OutputSink, RemoteCommand, Stream, UploadOptions,
    UploadSource,
};
use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

type Qga = QapiService<QgaStreamTokio<WriteHalf<UnixStream>>>;

/// Bytes per `guest-file-write`/`guest-file-read` (the agent's messages stay well under its
/// limits).
const CHUNK: usize = 48 * 1024;
/// The longest pause between two `guest-exec-status` questions (the protocol has no
/// completion event).
const MAX_STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// A communicator over the guest agent.
pub struct QgaCommunicator {
    service: Mutex<Qga>,
}

fn remote(what: &str, err: qapi::ExecuteError) -> CommError {
    match err {
        qapi::ExecuteError::Io(_) => CommError::Disconnected,
        qapi::ExecuteError::Qapi(e) => CommError::Remote(format!("{what}: {}", e.desc)),
    }
}

impl QgaCommunicator {
    /// Takes the agent's socket (already connected by QEMU) once the guest opened its port,
    /// and checks the agent answers (`guest-sync`).
    pub async fn connect(stream: UnixStream) -> Result<QgaCommunicator, CommError> {
        let (service, events) = QgaStreamTokio::open(stream).into_parts();
        events.spawn_tokio();
        service
            .guest_sync(sync_token())
            .await
            .map_err(|e| remote("guest-sync", e))?;
        Ok(QgaCommunicator {
            service: Mutex::new(service),
        })
    }

    async fn run(
        &self,
        argv: &[&str],
        env: Vec<String>,
        input: Option<Vec<u8>>,
    ) -> Result<qga::GuestExecStatus, CommError> {
        let service = self.service.lock().await;
        let (path, args) = argv.split_first().expect("a program");
        let started = service
            .execute(qga::guest_exec {
                path: path.to_string(),
                arg: Some(args.iter().map(|a| a.to_string()).collect()),
                env: Some(env),
                input_data: input,
                capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
            })
            .await
            .map_err(|e| remote("guest-exec", e))?;
        let mut interval = Duration::from_millis(20);
        loop {
            let status = service
                .execute(qga::guest_exec_status { pid: started.pid })
                .await
                .map_err(|e| remote("guest-exec-status", e))?;
            if status.exited {
                return Ok(status);
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(MAX_STATUS_INTERVAL);
        }
    }

    /// Runs a command that must succeed (helpers for uploads), returning its stdout.
    async fn checked(&self, argv: &[&str]) -> Result<Vec<u8>, CommError> {
        let status = self.run(argv, Vec::new(), None).await?;
        if status.exitcode != Some(0) {
            let err = String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default())
                .trim()
                .to_string();
            return Err(CommError::Remote(format!(
                "`{}` failed: {err}",
                argv.join(" ")
            )));
        }
        Ok(status.out_data.unwrap_or_default())
    }

    async fn write_file(&self, bytes: &[u8], dest: &str) -> Result<(), CommError> {
        let service = self.service.lock().await;
        let handle = service
            .execute(qga::guest_file_open {
                path: dest.to_string(),
                mode: Some("w".into()),
            })
            .await
            .map_err(|e| remote(&format!("cannot open `{dest}`"), e))?;
        let mut result = Ok(());
        for chunk in bytes.chunks(CHUNK) {
            let written = service
                .execute(qga::guest_file_write {
                    handle,
                    buf_b64: chunk.to_vec(),
                    count: Some(chunk.len() as i64),
                })
                .await;
            if let Err(e) = written {
                result = Err(remote(&format!("cannot write `{dest}`"), e));
                break;
            }
        }
        let closed = service.execute(qga::guest_file_close { handle }).await;
        result?;
        closed.map_err(|e| remote(&format!("cannot close `{dest}`"), e))?;
        Ok(())
    }

    async fn read_file(&self, src: &str) -> Result<Vec<u8>, CommError> {
        let service = self.service.lock().await;
        let handle = service
            .execute(qga::guest_file_open {
                path: src.to_string(),
                mode: Some("r".into()),
            })
            .await
            .map_err(|e| remote(&format!("cannot open `{src}`"), e))?;
        let mut data = Vec::new();
        let mut result = Ok(());
        loop {
            match service
                .execute(qga::guest_file_read {
                    handle,
                    count: Some(CHUNK as i64),
                })
                .await
            {
                Ok(read) => {
                    data.extend_from_slice(&read.buf_b64);
                    if read.eof || read.count == 0 {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(remote(&format!("cannot read `{src}`"), e));
                    break;
                }
            }
        }
        let _ = service.execute(qga::guest_file_close { handle }).await;
        result.map(|()| data)
    }

    async fn apply_options(&self, dest: &str, opts: &UploadOptions) -> Result<(), CommError> {
        if let Some(mode) = opts.mode {
            self.checked(&["chmod", &format!("{mode:o}"), dest]).await?;
        }
        if let Some(owner) = &opts.owner {
            self.checked(&["chown", owner, dest]).await?;
        }
        Ok(())
    }
}

/// A `guest-sync` value: any number works as long as it differs from a stale reply's.
fn sync_token() -> i32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    (nanos & 0x7fff_ffff) as i32
}

fn emit_lines(out: &mut dyn OutputSink, stream: Stream, data: Option<&[u8]>) {
    let text = String::from_utf8_lossy(data.unwrap_or_default());
    for line in text.lines() {
        out.line(stream, line);
    }
}

/// The shell command line that applies `cmd`'s environment and working directory.
fn shell_line(cmd: &RemoteCommand) -> String {
    let mut line = String::new();
    for (k, v) in &cmd.env {
        line.push_str(&format!("export {k}={}\n", kiln_comm::ssh::shell_quote(v)));
    }
    if let Some(dir) = &cmd.workdir {
        line.push_str(&format!(
            "cd {} || exit\n",
            kiln_comm::ssh::shell_quote(dir)
        ));
    }
    line.push_str(&cmd.command);
    line
}

#[async_trait]
impl Communicator for QgaCommunicator {
    fn kind(&self) -> &'static str {
        "qga"
    }

    async fn exec(
        &self,
        cmd: &RemoteCommand,
        out: &mut dyn OutputSink,
    ) -> Result<ExitStatus, CommError> {
        let line = shell_line(cmd);
        let status = self
            .run(&["/bin/sh", "-c", &line], Vec::new(), None)
            .await?;
        emit_lines(out, Stream::Stdout, status.out_data.as_deref());
        emit_lines(out, Stream::Stderr, status.err_data.as_deref());
        Ok(match (status.exitcode, status.signal) {
            (Some(code), _) => ExitStatus::Code(code as i32),
            (None, Some(signal)) => ExitStatus::Signal(signal as i32),
            (None, None) => ExitStatus::Disconnected,
        })
    }

    async fn upload(
        &self,
        src: UploadSource,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        let bytes = match src {
            UploadSource::Bytes(bytes) => bytes,
            UploadSource::File(path) => tokio::fs::read(&path)
                .await
                .map_err(|source| CommError::Local { path, source })?,
        };
        self.write_file(&bytes, dest).await?;
        self.apply_options(dest, opts).await
    }

    async fn upload_dir(
        &self,
        src: &Path,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        self.checked(&["mkdir", "-p", dest]).await?;
        let entries = std::fs::read_dir(src).map_err(|source| CommError::Local {
            path: src.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CommError::Local {
                path: src.to_owned(),
                source,
            })?;
            let path = entry.path();
            let target = format!(
                "{}/{}",
                dest.trim_end_matches('/'),
                entry.file_name().to_string_lossy()
            );
            if path.is_dir() {
                Box::pin(self.upload_dir(&path, &target, opts)).await?;
            } else {
                self.upload(UploadSource::File(path), &target, opts).await?;
            }
        }
        Ok(())
    }

    async fn download(&self, src: &str, dest: &Path) -> Result<(), CommError> {
        let data = self.read_file(src).await?;
        tokio::fs::write(dest, data)
            .await
            .map_err(|source| CommError::Local {
                path: dest.to_owned(),
                source,
            })
    }

    async fn download_dir(&self, _src: &str, _dest: &Path) -> Result<(), CommError> {
        Err(CommError::Unsupported {
            communicator: "qga",
            operation: "download a directory",
        })
    }
}
