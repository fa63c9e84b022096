//! Docker fixtures: the engine on `/var/run/docker.sock`, a throwaway registry on loopback, and
//! base images made locally (nothing can be pulled on these machines).
//!
//! [`engine`] uses the engine that answers on the socket (`scripts/dockerd.sh start` runs one for
//! the whole suite); when none answers it starts `dockerd --iptables=false --bridge=none` once per
//! test process. That daemon is started from a keeper thread that lives as long as the process
//! and is tied to it with `PR_SET_PDEATHSIG`, so it stops when the test process exits, whatever
//! way it exits. [`registry`] does the same for `docker-registry serve` on `127.0.0.1`, and
//! [`auth_registry`] for a second one that requires a login (HTTP basic auth).
//!
//! Base images are imported through the Engine API (`POST /images/create?fromSrc=-`) from a
//! rootfs tarball built here from Debian's `busybox-static`, tagged by the tarball's hash.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The engine's socket.
pub const SOCKET: &str = "/var/run/docker.sock";
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKERD_PIDFILE: &str = "/var/run/docker.pid";
const REGISTRY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";
/// How long a daemon may take to answer before the fixture gives up.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// A running engine on [`SOCKET`].
#[derive(Debug)]
pub struct Engine {
    /// Where the daemon this process started writes its log, if it started one.
    pub log: Option<PathBuf>,
}

/// The engine, started if needed (once per process). `None` when Docker is not installed and
/// `CI` is unset; panics under `CI` so that CI cannot silently skip Docker tests.
pub fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE.get_or_init(start_engine).as_ref()
}

fn start_engine() -> Option<Engine> {
    if ping() {
        return Some(Engine { log: None });
    }
    if !Path::new(DOCKERD).exists() {
        missing(DOCKERD, "docker.io");
        return None;
    }
    wait_for_previous_daemon();
    let log = std::env::temp_dir().join(format!("kiln-dockerd-{}.log", std::process::id()));
    let mut command = Command::new(DOCKERD);
    command.args(["--iptables=false", "--bridge=none"]);
    keep(command, &log);
    remove_at_exit(log.clone());
    wait_until("dockerd answers `GET /_ping`", &log, ping);
    Some(Engine { log: Some(log) })
}

/// A daemon being stopped (by `scripts/dockerd.sh stop` or a previous test process) still holds
/// its pid file; a second one would refuse to start until it is gone.
fn wait_for_previous_daemon() {
    let deadline = Instant::now() + READY_LIMIT;
    while let Some(pid) = std::fs::read_to_string(DOCKERD_PIDFILE)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dockerd {pid} from {DOCKERD_PIDFILE} did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry serving plain HTTP on `127.0.0.1:port()`, stopped when the test process exits.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    /// The one account of a registry that requires authentication ([`auth_registry`]).
    login: Option<(String, String)>,
}

impl Registry {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the prefix of repositories in this registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The user name and password the registry accepts, if it requires them.
    pub fn login(&self) -> Option<(&str, &str)> {
        self.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The status of an anonymous `GET /v2/`: 200, or 401 when the registry requires a login.
    pub fn anonymous_status(&self) -> u16 {
        v2_status(self.port).expect("the registry answers `GET /v2/`")
    }
}

/// The process's registry, started on first use. `None` when `docker-registry` is not installed
/// and `CI` is unset.
pub fn registry() -> Option<&'static Registry> {
    static REG: OnceLock<Option<Registry>> = OnceLock::new();
    REG.get_or_init(|| start_registry(false)).as_ref()
}

/// A second registry of the process that refuses anonymous access: it takes HTTP basic auth
/// (`auth: htpasswd`) for the one account of [`Registry::login`], a user name and a random
/// password made for this process. `None` as for [`registry`].
pub fn auth_registry() -> Option<&'static Registry> {
    static REG: OnceLock<Option<Registry>> = OnceLock::new();
    REG.get_or_init(|| start_registry(true)).as_ref()
}

fn start_registry(auth: bool) -> Option<Registry> {
    if !Path::new(REGISTRY).exists() {
        missing(REGISTRY, "docker-registry");
        return None;
    }
    // Statics are never dropped: the directory lives as long as the process and is removed when
    // it exits.
    let dir = tempfile::Builder::new()
        .prefix("kiln-registry-")
        .tempdir()
        .expect("temp dir")
        .keep();
    remove_at_exit(dir.clone());
    let port = super::free_port();
    let mut config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    let login = auth.then(|| {
        let user = "kiln".to_string();
        let password = random_password(&dir);
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(&password))).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            htpasswd.display()
        ));
        (user, password)
    });
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join("registry.log");
    let mut command = Command::new(REGISTRY);
    command.arg("serve").arg(&config_path);
    keep(command, &log);
    // A registry that requires a login answers 401 to an anonymous client.
    let ready = if auth { 401 } else { 200 };
    wait_until("the registry answers `GET /v2/`", &log, || {
        v2_status(port) == Some(ready)
    });
    Some(Registry { port, login })
}

/// A password nobody else knows: the hash of fresh random bytes and of this process.
fn random_password(dir: &Path) -> String {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("read /dev/urandom");
    let mut hash = Sha256::new();
    hash.update(seed);
    hash.update(dir.as_os_str().as_encoded_bytes());
    hex(&hash.finalize())[..24].to_string()
}

/// The bcrypt hash of `password` (the only kind the registry's htpasswd reads), made by
/// libxcrypt through Python's `crypt` (`$2b$`, which the registry's Go bcrypt accepts) at the
/// lowest cost: the registry checks it on every request.
fn bcrypt(password: &str) -> String {
    let script = "import crypt, sys\n\
                  print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))";
    let out = Command::new("python3")
        .args(["-W", "ignore", "-c", script, password])
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3 to hash the registry password");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        out.status.success() && hash.starts_with("$2"),
        "python3 made no bcrypt hash: {hash:?}"
    );
    hash
}

/// The status of an anonymous `GET /v2/` on the registry at `port`.
fn v2_status(port: u16) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut response = String::new();
    stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut response))
        .ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Files and directories of this process's daemons, removed when the process exits.
static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `path` (a file or a directory tree) when the process exits, however the test harness
/// ends it: `exit(3)` runs `atexit` handlers both when `main` returns and on `process::exit`.
fn remove_at_exit(path: PathBuf) {
    static HOOK: Once = Once::new();
    extern "C" fn remove_all() {
        for path in AT_EXIT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if std::fs::remove_dir_all(path).is_err() {
                std::fs::remove_file(path).ok();
            }
        }
    }
    AT_EXIT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path);
    // SAFETY: atexit(3) registers a plain function; `remove_all` neither unwinds nor exits.
    HOOK.call_once(|| unsafe {
        libc::atexit(remove_all);
    });
}

/// Starts `command` from a thread that waits for it for the rest of the process's life; the
/// kernel sends it SIGTERM when that thread (that is, the process) ends.
fn keep(mut command: Command, log: &Path) {
    let out = std::fs::File::create(log).expect("create daemon log");
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl(2) is async-signal-safe; it only sets a flag on the new process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || match command.spawn() {
        Ok(mut child) => {
            tx.send(Ok(())).ok();
            child.wait().ok();
        }
        Err(e) => {
            tx.send(Err(e)).ok();
        }
    });
    if let Err(e) = rx.recv().unwrap() {
        panic!("cannot start {}: {e}", log.display());
    }
}

/// Polls `ready` with a short backoff until it holds; panics with the daemon's log after
/// [`READY_LIMIT`].
fn wait_until(what: &str, log: &Path, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + READY_LIMIT;
    let mut pause = Duration::from_millis(10);
    while !ready() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out waiting until {what}; log:\n{text}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn missing(program: &str, package: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{program} is missing: install `{package}` (CI must not skip Docker tests)");
    }
    eprintln!("note: skipping: {program} is missing (apt-get install {package})");
}

/// True when the engine answers `GET /_ping` with `OK`.
fn ping() -> bool {
    matches!(api("GET", "/_ping", &[]), Ok((200, body)) if body == b"OK")
}

/// One HTTP/1.0 request to the engine (so the answer is neither chunked nor kept alive).
fn api(method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    api_with(method, path, "", body)
}

/// [`api`] with more `headers` (each line ending in `\r\n`).
fn api_with(
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(SOCKET)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
         {headers}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status = String::from_utf8_lossy(&response[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// The name of a busybox base image (`kiln-test/busybox:HASH`) with the Dockerfile-style
/// `changes` applied at import, imported unless the engine has it already. Its rootfs holds
/// `/bin/busybox` and its applets as symlinks, `/etc/passwd` (root, nobody), `/etc/group`,
/// `/tmp` and `/root`. Call [`engine`] first.
pub fn busybox_image(changes: &[&str]) -> String {
    let rootfs = busybox_rootfs();
    let mut hash = Sha256::new();
    hash.update(&rootfs);
    for change in changes {
        hash.update(change.as_bytes());
        hash.update([0]);
    }
    let name = format!("kiln-test/busybox:{}", &hex(&hash.finalize())[..12]);
    if matches!(
        api("GET", &format!("/images/{name}/json"), &[]),
        Ok((200, _))
    ) {
        return name;
    }
    let (repo, tag) = name.split_once(':').unwrap();
    let mut path = format!("/images/create?fromSrc=-&repo={repo}&tag={tag}");
    for change in changes {
        path.push_str("&changes=");
        path.push_str(&percent_encode(change));
    }
    let (status, body) = api("POST", &path, &rootfs).expect("import the busybox base image");
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == 200 && !body.contains("\"error"),
        "importing {name} failed ({status}): {body}"
    );
    name
}

/// Removes the container it names (with force) when dropped, so a failing test leaves nothing.
#[derive(Debug)]
pub struct RemoveOnDrop(pub String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        remove_container(&self.0);
    }
}

/// Removes a container (with force), ignoring one that does not exist.
pub fn remove_container(id: &str) {
    let (status, body) =
        api("DELETE", &format!("/containers/{id}?force=1&v=1"), &[]).expect("remove container");
    assert!(
        matches!(status, 204 | 404),
        "removing container {id} failed ({status}): {}",
        String::from_utf8_lossy(&body)
    );
}

/// Removes an image (with force), ignoring one that does not exist.
pub fn remove_image(name: &str) {
    let (status, body) =
        api("DELETE", &format!("/images/{name}?force=1"), &[]).expect("remove image");
    assert!(
        matches!(status, 200 | 404),
        "removing image {name} failed ({status}): {}",
        String::from_utf8_lossy(&body)
    );
}

/// Whether the engine has an image of this name or id.
pub fn has_image(name: &str) -> bool {
    let (status, body) = api("GET", &format!("/images/{name}/json"), &[]).expect("inspect image");
    assert!(
        matches!(status, 200 | 404),
        "inspecting image {name} failed ({status}): {}",
        String::from_utf8_lossy(&body)
    );
    status == 200
}

/// Gives `image` the name `repo:tag` too (`docker tag`).
pub fn tag_image(image: &str, repo: &str, tag: &str) {
    let path = format!(
        "/images/{image}/tag?repo={}&tag={}",
        percent_encode(repo),
        percent_encode(tag)
    );
    let (status, body) = api("POST", &path, &[]).expect("tag image");
    assert_eq!(
        status,
        201,
        "tagging {image} as {repo}:{tag} failed: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Pushes `repo:tag` anonymously (`docker push`); panics with the engine's error.
pub fn push_image(repo: &str, tag: &str) {
    let path = format!("/images/{repo}/push?tag={}", percent_encode(tag));
    // No credentials: the JSON `{}`.
    let (status, body) =
        api_with("POST", &path, "X-Registry-Auth: e30=\r\n", &[]).expect("push image");
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == 200 && !body.contains("\"error"),
        "pushing {repo}:{tag} failed ({status}): {body}"
    );
}

/// `GET /images/{name}/json` as JSON, with every field the engine sends (`Config.Tty`, ...).
pub fn inspect_image(name: &str) -> serde_json::Value {
    let (status, body) = api("GET", &format!("/images/{name}/json"), &[]).expect("inspect image");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("image inspect JSON")
}

/// The names of all containers, running or not (without the leading `/`).
pub fn container_names() -> Vec<String> {
    let (status, body) = api("GET", "/containers/json?all=1", &[]).expect("list containers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("container list");
    list.iter()
        .flat_map(|c| c["Names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(|n| n.trim_start_matches('/').to_owned()))
        .collect()
}

/// The Debian bookworm minbase image `vm-tests/docker-base.sh` (under `repo`) makes, built on
/// first use (about a minute; then cached under `/var/tmp/kiln-cache/`). Call [`engine`] first.
pub fn debian_image(repo: &Path) -> String {
    let out = Command::new("bash")
        .arg(repo.join("vm-tests/docker-base.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run vm-tests/docker-base.sh");
    assert!(out.status.success(), "vm-tests/docker-base.sh failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A deterministic tarball of a busybox root filesystem.
fn busybox_rootfs() -> Vec<u8> {
    if !Path::new(BUSYBOX).exists() {
        panic!("{BUSYBOX} is missing: install `busybox-static`");
    }
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("run busybox --list");
    let mut applets: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox")
        .map(str::to_owned)
        .collect();
    applets.sort();
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
    ] {
        let mut header = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut header, dir, std::io::empty()).unwrap();
    }
    let binary = std::fs::read(BUSYBOX).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())
        .unwrap();
    let files = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut h, "usr/bin/env", "/bin/busybox")
        .unwrap();
    tar.into_inner().unwrap()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn engine_answers_and_imports_a_busybox_image() {
        let Some(_engine) = engine() else { return };
        assert!(ping());
        let name = busybox_image(&["ENV KILN_BASE=busybox", "CMD [\"/bin/sh\"]"]);
        let (status, body) = api("GET", &format!("/images/{name}/json"), &[]).unwrap();
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("KILN_BASE=busybox"), "{body}");
        // Importing again finds the same image.
        assert_eq!(
            busybox_image(&["ENV KILN_BASE=busybox", "CMD [\"/bin/sh\"]"]),
            name
        );
    }

    #[test]
    fn registry_answers_on_loopback() {
        let Some(registry) = registry() else { return };
        assert_eq!(registry.anonymous_status(), 200);
        assert!(registry.login().is_none());
    }

    #[test]
    fn auth_registry_refuses_anonymous_clients_and_takes_its_login() {
        let Some(registry) = auth_registry() else {
            return;
        };
        assert_eq!(registry.anonymous_status(), 401);
        let (user, password) = registry.login().unwrap();
        let basic = |user: &str, password: &str| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", registry.port())).unwrap();
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            write!(
                stream,
                "GET /v2/ HTTP/1.0\r\nHost: localhost\r\nAuthorization: Basic {token}\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response.split_whitespace().nth(1).unwrap().to_string()
        };
        assert_eq!(basic(user, password), "200");
        assert_eq!(basic(user, "wrong"), "401");
    }
}
