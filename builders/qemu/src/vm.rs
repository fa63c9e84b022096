//! A running QEMU: launched paused in its own process group, controlled through QMP (the `qapi`
//! crate), its serial console copied to a log file, its exit published to whoever waits.
//!
//! QEMU connects *to* Kiln: the QMP and console character devices are unix sockets in client mode
//! (`server=off`) on listeners Kiln bound before starting QEMU, so no socket is ever polled for.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::watch;

type Qmp = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// How many of QEMU's last stderr lines an error quotes.
const STDERR_TAIL: usize = 10;
/// How long QEMU gets to connect its sockets after it started.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Why QEMU could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on `{}`", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the console log `{}`", path.display())]
    ConsoleLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited ({status}){}", tail_text(.stderr))]
    Exited { status: String, stderr: Vec<String> },
    #[error("QEMU did not connect its {what} socket within {CONNECT_LIMIT:?}")]
    NoConnect { what: &'static str },
    #[error("QMP {what} failed")]
    Qmp {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP command `{command}` failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" / "))
    }
}

/// The id of the guest agent's virtio-serial port, named in QMP `VSERPORT_CHANGE` events.
const AGENT_PORT_ID: &str = "kiln-qga-port";

/// What the launcher needs.
pub struct LaunchSpec {
    pub program: String,
    /// Arguments besides the sockets Kiln adds.
    pub args: Vec<String>,
    /// Directory for the sockets (short path: unix socket paths are limited to 108 bytes).
    pub runtime_dir: PathBuf,
    /// Where the serial console is copied.
    pub console_log: PathBuf,
    /// Attach a guest-agent port (for the `qga` communicator).
    pub guest_agent: bool,
}

/// A running VM.
pub struct Vm {
    pub pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    qmp: Qmp,
    stderr: Arc<Mutex<Vec<String>>>,
    /// When the serial console last printed something.
    pub console_activity: watch::Receiver<Instant>,
    pub qmp_socket: PathBuf,
    /// The guest agent's socket, until the communicator takes it.
    agent_socket: Mutex<Option<UnixStream>>,
    /// Whether the guest's agent has its port open (QMP `VSERPORT_CHANGE`).
    pub agent_open: watch::Receiver<bool>,
    /// The console's text so far (its last [`CONSOLE_KEEP`] bytes), for [`Vm::wait_console`].
    console_text: Arc<Mutex<String>>,
    console_seen: watch::Receiver<u64>,
}

/// How much of the console's text is kept for [`Vm::wait_console`].
const CONSOLE_KEEP: usize = 64 * 1024;

/// Lines from the serial console, for debug events.
pub type ConsoleLines = tokio::sync::mpsc::UnboundedReceiver<String>;

impl Vm {
    /// Starts QEMU paused, connects QMP, then lets the guest run. `on_pid` gets the process id as
    /// soon as it exists (the caller records it for cleanup before anything else can fail).
    pub async fn launch(
        spec: &LaunchSpec,
        on_pid: impl FnOnce(i32),
    ) -> Result<(Vm, ConsoleLines), VmError> {
        let qmp_socket = spec.runtime_dir.join("qmp.sock");
        let console_socket = spec.runtime_dir.join("console.sock");
        let listen = |path: &Path| {
            UnixListener::bind(path).map_err(|source| VmError::Listen {
                path: path.to_owned(),
                source,
            })
        };
        let qmp_listener = listen(&qmp_socket)?;
        let console_listener = listen(&console_socket)?;
        let agent_socket = spec.runtime_dir.join("qga.sock");
        let agent_listener = if spec.guest_agent {
            Some(listen(&agent_socket)?)
        } else {
            None
        };

        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .arg("-S")
            .arg("-chardev")
            .arg(format!("socket,id=kiln-qmp,path={}", qmp_socket.display()))
            .arg("-mon")
            .arg("chardev=kiln-qmp,mode=control")
            .arg("-chardev")
            .arg(format!(
                "socket,id=kiln-console,path={}",
                console_socket.display()
            ))
            .arg("-serial")
            .arg("chardev:kiln-console");
        if spec.guest_agent {
            command
                .arg("-chardev")
                .arg(format!("socket,id=kiln-qga,path={}", agent_socket.display()))
                .args(["-device", "virtio-serial,id=kiln-vser", "-device"])
                .arg(format!(
                    "virtserialport,bus=kiln-vser.0,chardev=kiln-qga,name=org.qemu.guest_agent.0,id={AGENT_PORT_ID}"
                ));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        on_pid(pid);

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr_lines = stderr.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = stderr_lines.lock().unwrap();
                if tail.len() == STDERR_TAIL {
                    tail.remove(0);
                }
                tail.push(line);
            }
        });
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            // Let the last stderr lines arrive before anyone reads them.
            let _ = stderr_task.await;
            let _ = exit_tx.send(status.or_else(|| Some(ExitStatus::default())));
        });

        let mut vm_exit = exit.clone();
        let exited =
            |stderr: &Arc<Mutex<Vec<String>>>, status: Option<ExitStatus>| VmError::Exited {
                status: status.map(|s| s.to_string()).unwrap_or_default(),
                stderr: stderr.lock().unwrap().clone(),
            };
        let accept = |listener: UnixListener, what: &'static str| async move {
            match tokio::time::timeout(CONNECT_LIMIT, listener.accept()).await {
                Ok(Ok((stream, _))) => Ok(stream),
                Ok(Err(source)) => Err(VmError::Qmp {
                    what: "accept",
                    source,
                }),
                Err(_) => Err(VmError::NoConnect { what }),
            }
        };
        let connect = async {
            // QEMU opens its character devices in command-line order.
            let qmp = accept(qmp_listener, "QMP").await?;
            let console = accept(console_listener, "console").await?;
            let agent = match agent_listener {
                Some(listener) => Some(accept(listener, "guest agent").await?),
                None => None,
            };
            Ok::<_, VmError>((qmp, console, agent))
        };
        let (qmp_stream, console, agent) = tokio::select! {
            r = connect => r?,
            status = wait_exit(&mut vm_exit) => return Err(exited(&stderr, status)),
        };

        let (console_tx, console_lines) = tokio::sync::mpsc::unbounded_channel();
        let (activity_tx, console_activity) = watch::channel(Instant::now());
        let console_text = Arc::new(Mutex::new(String::new()));
        let (seen_tx, console_seen) = watch::channel(0u64);
        let log = tokio::fs::File::create(&spec.console_log)
            .await
            .map_err(|source| VmError::ConsoleLog {
                path: spec.console_log.clone(),
                source,
            })?;
        tokio::spawn(copy_console(
            console,
            log,
            console_tx,
            activity_tx,
            (console_text.clone(), seen_tx),
        ));

        let negotiation =
            QmpStreamTokio::open(qmp_stream)
                .await
                .map_err(|source| VmError::Qmp {
                    what: "greeting",
                    source,
                })?;
        let stream = negotiation
            .negotiate()
            .await
            .map_err(|source| VmError::Qmp {
                what: "negotiation",
                source,
            })?;
        let (qmp, mut events) = stream.into_parts();
        // The event stream also carries command responses: keep polling it for the VM's life.
        let (agent_tx, agent_open) = watch::channel(false);
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if let qmp::Event::VSERPORT_CHANGE { data, .. } = event {
                    if data.id == AGENT_PORT_ID {
                        let _ = agent_tx.send(data.open);
                    }
                }
            }
        });

        let vm = Vm {
            pid,
            exit,
            qmp,
            stderr,
            console_activity,
            qmp_socket,
            agent_socket: Mutex::new(agent),
            agent_open,
            console_text,
            console_seen,
        };
        vm.execute("cont", qmp::cont {}).await?;
        Ok((vm, console_lines))
    }

    async fn execute<C: qapi::Command + qmp::QmpCommand>(
        &self,
        name: &'static str,
        command: C,
    ) -> Result<C::Ok, VmError> {
        self.qmp.execute(command).await.map_err(|e| match e {
            qapi::ExecuteError::Qapi(e) => VmError::Command {
                command: name,
                message: e.desc,
            },
            qapi::ExecuteError::Io(source) => VmError::Qmp { what: name, source },
        })
    }

    /// The guest agent's connection, once: the agent must keep one client for the VM's life.
    pub fn take_agent_socket(&self) -> Option<UnixStream> {
        self.agent_socket.lock().unwrap().take()
    }

    /// Asks the guest to power off (ACPI).
    pub async fn powerdown(&self) -> Result<(), VmError> {
        self.execute("system_powerdown", qmp::system_powerdown {})
            .await
            .map(drop)
    }

    /// Waits until QEMU has exited, returning why when it is known.
    pub async fn wait_exit(&self) -> Option<ExitStatus> {
        wait_exit(&mut self.exit.clone()).await
    }

    /// The error describing QEMU's exit, quoting its last stderr lines.
    pub fn exit_error(&self, status: Option<ExitStatus>) -> VmError {
        VmError::Exited {
            status: status.map(|s| s.to_string()).unwrap_or_default(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }

    /// Resolves once the serial console has printed `text` (since the VM started); never if the
    /// console closes first.
    pub async fn wait_console(&self, text: &str) {
        let mut seen = self.console_seen.clone();
        loop {
            if self.console_text.lock().unwrap().contains(text) {
                return;
            }
            if seen.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Presses keys and releases them (modifiers first down, last up) in one QMP
    /// `input-send-event`.
    pub async fn press(&self, keys: &[qmp::QKeyCode]) -> Result<(), VmError> {
        let down = keys.iter().map(|key| key_event(*key, true));
        let up = keys.iter().rev().map(|key| key_event(*key, false));
        self.send_input(down.chain(up).collect()).await
    }

    /// Holds a key down (`true`) or releases it.
    pub async fn key(&self, key: qmp::QKeyCode, down: bool) -> Result<(), VmError> {
        self.send_input(vec![key_event(key, down)]).await
    }

    async fn send_input(&self, events: Vec<qmp::InputEvent>) -> Result<(), VmError> {
        self.execute(
            "input-send-event",
            qmp::input_send_event {
                device: None,
                head: None,
                events,
            },
        )
        .await
        .map(drop)
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Stops QEMU for good: QMP `quit`, then SIGKILL to its process group after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        let quit = async {
            let _ = self.execute("quit", qmp::quit {}).await;
            self.wait_exit().await
        };
        if tokio::time::timeout(grace, quit).await.is_err() {
            kill_group(self.pid);
            self.wait_exit().await;
        }
    }
}

fn key_event(key: qmp::QKeyCode, down: bool) -> qmp::InputEvent {
    qmp::InputEvent::key(qmp::InputKeyEventWrapper {
        data: qmp::InputKeyEvent {
            down,
            key: qmp::KeyValue::qcode(qmp::QKeyCodeWrapper { data: key }),
        },
    })
}

/// Sends SIGKILL to the process group `pid` leads.
pub fn kill_group(pid: i32) {
    // SAFETY: killpg only sends a signal; a stale group id fails with ESRCH, which is fine.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
}

async fn wait_exit(exit: &mut watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    match exit.wait_for(|s| s.is_some()).await {
        Ok(status) => *status,
        Err(_) => None,
    }
}

/// Copies the console to the log file and to `lines`, marking activity.
async fn copy_console(
    mut console: UnixStream,
    mut log: tokio::fs::File,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
    activity: watch::Sender<Instant>,
    (text, seen): (Arc<Mutex<String>>, watch::Sender<u64>),
) {
    let mut buf = vec![0u8; 8192];
    let mut pending = Vec::new();
    while let Ok(n) = console.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let _ = activity.send(Instant::now());
        let _ = log.write_all(&buf[..n]).await;
        {
            let mut text = text.lock().unwrap();
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.len() > CONSOLE_KEEP {
                let mut cut = text.len() - CONSOLE_KEEP;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text.drain(..cut);
            }
        }
        seen.send_modify(|n| *n += 1);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let _ = lines.send(text.trim_end_matches(['\r', '\n']).to_string());
        }
    }
    let _ = log.flush().await;
}
