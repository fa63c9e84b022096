//! Test fixtures shared by Kiln crates: a throwaway OpenSSH server on a loopback port, and (in
//! [`docker`]) a Docker engine, a registry and base images, and (in [`vm`]) QEMU vm-test helpers.
//!
//! [`Sshd::start`] runs Debian's `/usr/sbin/sshd -D -e` with its own config, host key and
//! authorized keys in a temp dir, waits until it reports that it listens, and kills it (and every
//! session process it started) on drop. If the test process dies first (a timeout, a crash), the
//! kernel kills sshd too (`PR_SET_PDEATHSIG`, tied to the thread that started it: keep an `Sshd`
//! on that thread). Without `/usr/sbin/sshd` it returns `None` after a note, or panics when `CI`
//! is set so that CI cannot silently skip SSH tests.
//!
//! sshd logs at `VERBOSE`, so [`Sshd::log`] has a `Starting session: command for USER from ...`
//! line per command or transfer (one channel each) besides the `Accepted publickey for USER` line
//! per login: tests count them to check that work shares one connection and few channels.

pub mod docker;
pub mod vm;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to say it listens before the fixture gives up.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// How to set up the server.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Extra `authorized_keys` lines (e.g. a communicator's ephemeral key).
    pub authorized_keys: Vec<String>,
    /// Allow password logins.
    pub password_auth: bool,
    /// Listen on this port instead of a free one picked by [`free_port`].
    pub port: Option<u16>,
}

/// A running sshd on `127.0.0.1:port()`, for root (and any user, through the same
/// `authorized_keys`).
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Sshd {
    /// Starts a server that accepts [`Sshd::client_key`] for root. `None` when sshd is not
    /// installed (and `CI` is unset).
    pub fn start() -> Option<Sshd> {
        Sshd::start_with(SshdOptions::default())
    }

    pub fn start_with(options: SshdOptions) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            if std::env::var_os("CI").is_some() {
                panic!("{SSHD} is missing: install `openssh-server` (CI must not skip SSH tests)");
            }
            eprintln!("note: skipping: {SSHD} is missing (apt-get install openssh-server)");
            return None;
        }
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("kiln-sshd-")
            .tempdir()
            .expect("temp dir");
        keygen(&dir.path().join("host_ed25519"));
        keygen(&dir.path().join("client_ed25519"));
        let mut keys = std::fs::read_to_string(dir.path().join("client_ed25519.pub")).unwrap();
        for line in &options.authorized_keys {
            keys.push_str(line);
            keys.push('\n');
        }
        std::fs::write(dir.path().join("authorized_keys"), keys).unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let d = dir.path().display();
        let password = if options.password_auth { "yes" } else { "no" };
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
             PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin yes\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication {password}\nKbdInteractiveAuthentication no\n\
             MaxSessions 100\nMaxStartups 100\nAllowTcpForwarding yes\nLogLevel VERBOSE\n"
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        let mut sshd = Sshd {
            dir,
            port,
            child: None,
            log: Arc::default(),
        };
        sshd.launch();
        Some(sshd)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key root may log in with.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// The server's host public key, as an OpenSSH line (`ssh-ed25519 AAAA... comment`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The server's host key fingerprint as `ssh-keygen -l` prints it (`SHA256:...`).
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .expect("run ssh-keygen -l");
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints a fingerprint")
            .to_owned()
    }

    /// Everything sshd wrote to stderr so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many sessions (commands, transfers: one channel each) sshd started so far.
    pub fn sessions_started(&self) -> usize {
        self.log().matches("Starting session: ").count()
    }

    /// Kills sshd and every session it runs, as a crash or a reboot would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let mut all = descendants(pid);
            all.push(pid);
            // Freeze everything first, so that no session process can still report its
            // command's end (an exit signal) to the client: the connection just drops.
            for signal in [libc::SIGSTOP, libc::SIGKILL] {
                for &process in &all {
                    // SAFETY: plain kill(2) on our own child and the processes found under it.
                    unsafe { libc::kill(process, signal) };
                }
            }
            child.wait().ok();
        }
    }

    /// Stops the server and starts it again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Restarts the server with a new host key, as a reinstalled machine (or an impostor) would.
    pub fn restart_with_new_host_key(&mut self) {
        self.stop();
        for file in ["host_ed25519", "host_ed25519.pub"] {
            std::fs::remove_file(self.dir.path().join(file)).unwrap();
        }
        keygen(&self.dir.path().join("host_ed25519"));
        self.launch();
    }

    fn launch(&mut self) {
        let mut command = Command::new(SSHD);
        command
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl(2) is async-signal-safe; it only sets a flag on the new process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            })
        };
        let mut child = command.spawn().expect("start sshd");
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Server listening on") {
                    ready_tx.send(()).ok();
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        if ready_rx.recv_timeout(READY_LIMIT).is_err() {
            let log = self.log();
            self.stop();
            panic!("sshd did not start listening on port {}:\n{log}", self.port);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes sure the local user `name` exists (with a home and `/bin/sh` as its shell) and has
/// `password`, for password-login tests. This changes the machine's user database, so it only
/// runs as root, on a throwaway machine; returns `false` (after a note) otherwise, and panics
/// under `CI` (which runs as root and must not skip the test).
pub fn ensure_password_user(name: &str, password: &str) -> bool {
    // Tests of one binary run side by side: `useradd` and `chpasswd` must not race.
    static USERS: Mutex<()> = Mutex::new(());
    let _one_at_a_time = USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "creating the test user `{name}` needs root (CI must not skip password logins)"
        );
        eprintln!("note: skipping: creating the test user `{name}` needs root");
        return false;
    }
    let exists = Command::new("id")
        .args(["-u", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !exists {
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name} failed");
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run chpasswd");
    use std::io::Write;
    writeln!(chpasswd.stdin.take().unwrap(), "{name}:{password}").unwrap();
    assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
    true
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// All processes below `root` (children, grandchildren, ...), from `/proc`.
fn descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last `)`.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found: HashSet<i32> = HashSet::from([root]);
    loop {
        let before = found.len();
        for &(pid, ppid) in &parents {
            if found.contains(&ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found.into_iter().collect()
}
