//! The SSH communicator: one authenticated session per build, every command and transfer a
//! channel on it (russh, pure Rust).
//!
//! Commands run through the login shell as `export K='v'` lines, `cd 'DIR' || exit`, then the
//! command. Files stream into `cat > FILE`; directories travel as one tar stream into `tar -x`
//! (and out of `tar -c`), so a thousand small files cost one round trip, not a thousand.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{
    CommError, Communicator, ExitStatus, OutputSink, RemoteCommand, Stream, UploadOptions,
    UploadSource,
};

mod config;
mod connect;
mod key;
mod transfer;

pub use config::{parse_go_duration, ParseDurationError, Secret, SshConfig};
pub use connect::{AttemptError, ConnectError};
pub use key::{fingerprint, GenerateKeyError, HostKeyInfo, HostKeyTrust, SshKey};
pub use russh::keys::PublicKey;

use connect::{HostKeys, Session, Settings, Trust};

/// A communicator over one SSH session. Cheap to share: every operation opens a channel.
pub struct SshCommunicator {
    settings: Settings,
    pty: bool,
    state: Mutex<State>,
}

struct State {
    session: Arc<Session>,
    trust: Trust,
    host_keys: HostKeys,
}

impl SshCommunicator {
    /// Connects and logs in, waiting up to `ssh_timeout` for the machine (see [`ConnectError`]).
    pub async fn connect(config: &SshConfig) -> Result<SshCommunicator, ConnectError> {
        let (settings, trust) = Settings::from_config(config)?;
        let (session, host_keys) = connect::connect(&settings, &trust).await?;
        let trust = trust.remember(&host_keys);
        Ok(SshCommunicator {
            settings,
            pty: config.ssh_pty,
            state: Mutex::new(State {
                session: Arc::new(session),
                trust,
                host_keys,
            }),
        })
    }

    /// The machine's host key and why it was trusted; report a [`HostKeyTrust::FirstUse`] to
    /// the user.
    pub fn host_key(&self) -> HostKeyInfo {
        self.state.lock().unwrap().host_keys.machine.clone()
    }

    /// The jump host's key and why it was trusted, when there is a jump host
    /// (`ssh_bastion_host`); report a [`HostKeyTrust::FirstUse`] to the user.
    pub fn bastion_host_key(&self) -> Option<HostKeyInfo> {
        self.state.lock().unwrap().host_keys.bastion.clone()
    }

    fn session(&self) -> Arc<Session> {
        self.state.lock().unwrap().session.clone()
    }

    /// Runs `command` (a shell command line) on a new channel, feeding `stdin` to it and handing
    /// its output to `output`.
    async fn run(
        &self,
        command: &str,
        pty: bool,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        output: &mut Output<'_>,
    ) -> Result<ExitStatus, CommError> {
        let session = self.session();
        let channel: Channel<Msg> = session
            .handle
            .channel_open_session()
            .await
            .map_err(|e| lost(&session, e))?;
        if pty {
            channel
                .request_pty(false, "xterm", 80, 24, 0, 0, &[])
                .await
                .map_err(|e| lost(&session, e))?;
        }
        channel
            .exec(false, command)
            .await
            .map_err(|e| lost(&session, e))?;
        let (mut reader, writer) = channel.split();
        let send = async {
            if let Some(stdin) = stdin {
                writer.data(stdin).await?;
            }
            writer.eof().await
        };
        let receive = async {
            let mut status = None;
            while let Some(message) = reader.wait().await {
                match message {
                    ChannelMsg::Data { data } => output.data(Stream::Stdout, &data).await?,
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        output.data(Stream::Stderr, &data).await?
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(ExitStatus::Code(exit_status as i32))
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = Some(ExitStatus::Signal(signal_number(&signal_name)))
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            output.finish().await?;
            Ok::<_, CommError>(status.unwrap_or(ExitStatus::Disconnected))
        };
        let (sent, status) = tokio::join!(send, receive);
        let status = status?;
        // A command that exits early stops reading its input; its status says more than the
        // failed write.
        if status.success() {
            sent.map_err(|e| lost(&session, e))?;
        }
        Ok(status)
    }

    /// Runs a transfer command: `Ok` on exit code 0, its stderr in the error otherwise.
    async fn transfer(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        stdout: Option<&mut (dyn AsyncWrite + Unpin + Send)>,
    ) -> Result<(), CommError> {
        let mut output = Output::Capture {
            stdout,
            stderr: Vec::new(),
        };
        let status = self.run(command, false, stdin, &mut output).await?;
        let Output::Capture { stderr, .. } = output else {
            unreachable!()
        };
        match status {
            ExitStatus::Code(0) => Ok(()),
            ExitStatus::Disconnected => Err(CommError::Disconnected),
            ExitStatus::Code(code) => Err(remote_failure(
                command,
                &format!("exited with {code}"),
                &stderr,
            )),
            ExitStatus::Signal(signal) => Err(remote_failure(
                command,
                &format!("was killed by signal {signal}"),
                &stderr,
            )),
        }
    }
}

fn remote_failure(command: &str, how: &str, stderr: &[u8]) -> CommError {
    CommError::Remote(format!(
        "`{command}` {how}: {}",
        String::from_utf8_lossy(stderr).trim()
    ))
}

/// Maps a russh error during an operation: a dead session is a disconnect.
fn lost(session: &Session, error: russh::Error) -> CommError {
    let gone = session.handle.is_closed()
        || matches!(
            error,
            russh::Error::Disconnect
                | russh::Error::HUP
                | russh::Error::SendError
                | russh::Error::RecvError
                | russh::Error::KeepaliveTimeout
                | russh::Error::IO(_)
        );
    if gone {
        CommError::Disconnected
    } else {
        CommError::Remote(format!("ssh protocol error: {error}"))
    }
}

fn signal_number(signal: &Sig) -> i32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => -1,
    }
}

/// Where a channel's output goes.
enum Output<'a> {
    /// Split into lines for a command's caller.
    Lines {
        sink: &'a mut dyn OutputSink,
        stdout: LineBuffer,
        stderr: LineBuffer,
    },
    /// Bytes for a transfer; stderr kept for the error message.
    Capture {
        stdout: Option<&'a mut (dyn AsyncWrite + Unpin + Send)>,
        stderr: Vec<u8>,
    },
}

impl Output<'_> {
    async fn data(&mut self, stream: Stream, data: &[u8]) -> Result<(), CommError> {
        match self {
            Output::Lines {
                sink,
                stdout,
                stderr,
            } => {
                let buffer = if stream == Stream::Stdout {
                    stdout
                } else {
                    stderr
                };
                buffer.push(data, |line| sink.line(stream, line));
            }
            Output::Capture { stdout, stderr } => match (stream, stdout) {
                (Stream::Stdout, Some(writer)) => writer.write_all(data).await?,
                (Stream::Stdout, None) => {}
                (Stream::Stderr, _) => stderr.extend_from_slice(data),
            },
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), CommError> {
        match self {
            Output::Lines {
                sink,
                stdout,
                stderr,
            } => {
                stdout.finish(|line| sink.line(Stream::Stdout, line));
                stderr.finish(|line| sink.line(Stream::Stderr, line));
            }
            Output::Capture {
                stdout: Some(writer),
                ..
            } => writer.flush().await?,
            Output::Capture { stdout: None, .. } => {}
        }
        Ok(())
    }
}

/// Splits a byte stream into lines: on `\n`, dropping a `\r` before it (ptys send `\r\n`).
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.partial.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n') {
            emit(&decode(&self.partial[start..start + end]));
            start += end + 1;
        }
        self.partial.drain(..start);
    }

    /// Emits the last line if it had no newline.
    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            emit(&decode(&self.partial));
            self.partial.clear();
        }
    }
}

fn decode(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// Quotes `text` for a POSIX shell: `'it'\''s'`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The full command line for `cmd`: environment, working directory, then the command.
fn command_line(cmd: &RemoteCommand) -> Result<String, CommError> {
    let mut line = String::new();
    for (name, value) in &cmd.env {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(CommError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid environment variable name"),
            )));
        }
        line.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    if let Some(dir) = &cmd.workdir {
        line.push_str(&format!("cd {} || exit\n", shell_quote(dir)));
    }
    line.push_str(&cmd.command);
    Ok(line)
}

#[async_trait]
impl Communicator for SshCommunicator {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    async fn exec(
        &self,
        cmd: &RemoteCommand,
        out: &mut dyn OutputSink,
    ) -> Result<ExitStatus, CommError> {
        let line = command_line(cmd)?;
        let mut output = Output::Lines {
            sink: out,
            stdout: LineBuffer::default(),
            stderr: LineBuffer::default(),
        };
        self.run(&line, cmd.pty || self.pty, None, &mut output)
            .await
    }

    async fn upload(
        &self,
        src: UploadSource,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        transfer::upload(self, src, dest, opts).await
    }

    async fn upload_dir(
        &self,
        src: &Path,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        transfer::upload_dir(self, src, dest, opts).await
    }

    async fn download(&self, src: &str, dest: &Path) -> Result<(), CommError> {
        transfer::download(self, src, dest).await
    }

    async fn download_dir(&self, src: &str, dest: &Path) -> Result<(), CommError> {
        transfer::download_dir(self, src, dest).await
    }

    /// Logs in again with the same credentials, requiring the same host key as before (a key
    /// accepted on first use included), waiting up to `ssh_timeout`.
    async fn reconnect(&self) -> Result<(), CommError> {
        let trust = self.state.lock().unwrap().trust.clone();
        // The trust requires the keys seen before, so `host_key()` stays as it was.
        let (session, _) = connect::connect(&self.settings, &trust)
            .await
            .map_err(|e| CommError::Connect(Box::new(e)))?;
        self.state.lock().unwrap().session = Arc::new(session);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_newline_and_flush_the_rest() {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        buffer.push(b"one\r\ntw", |l| lines.push(l.to_owned()));
        buffer.push(b"o\n\nthr", |l| lines.push(l.to_owned()));
        buffer.finish(|l| lines.push(l.to_owned()));
        assert_eq!(lines, ["one", "two", "", "thr"]);
    }

    #[test]
    fn quoting_and_command_lines() {
        assert_eq!(shell_quote("it's a \"dir\""), r#"'it'\''s a "dir"'"#);
        let cmd = RemoteCommand {
            command: "echo $A".into(),
            env: vec![("A".into(), "x y'z".into())],
            workdir: Some("/tmp/my dir".into()),
            pty: false,
        };
        assert_eq!(
            command_line(&cmd).unwrap(),
            "export A='x y'\\''z'\ncd '/tmp/my dir' || exit\necho $A"
        );
        let bad = RemoteCommand {
            command: "true".into(),
            env: vec![("A B".into(), "x".into())],
            ..Default::default()
        };
        assert!(command_line(&bad).is_err());
    }
}
