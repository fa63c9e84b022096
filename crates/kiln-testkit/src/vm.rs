//! QEMU vm-test helpers: the Debian base disk of `vm-tests/base-image.sh`, and booting a built
//! image in a fresh VM (TCG, changes discarded) to look at it from the host (HTTP through
//! `hostfwd`) and from inside (commands through the guest agent).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::UnixStream;

/// Whether vm-tests run (`KILN_VM_TESTS=1`, which `scripts/test.sh` sets); says how to turn
/// them on when not.
pub fn vm_tests_enabled() -> bool {
    let on = std::env::var("KILN_VM_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("skipped: set KILN_VM_TESTS=1 to boot VMs (vm-tests)");
    }
    on
}

/// Builds (or finds in the cache) the base disk with `REPO/vm-tests/base-image.sh` and returns
/// its path.
pub fn base_image(repo: &Path) -> PathBuf {
    cached_by_script(repo, "vm-tests/base-image.sh")
}

/// Builds (or finds in the cache) the installer ISO of `REPO/vm-tests/installer-iso.sh` and
/// returns its path.
pub fn installer_iso(repo: &Path) -> PathBuf {
    cached_by_script(repo, "vm-tests/installer-iso.sh")
}

fn cached_by_script(repo: &Path, script: &str) -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(repo.join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The files (path without `./` → text) of the tar archive at the start of the raw disk image
/// `raw`: what the installer of `vm-tests/installer-iso.sh` wrote.
pub fn installed_files(raw: &Path) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(raw).unwrap());
    for entry in archive
        .entries()
        .expect("a tar archive at the start of the disk")
    {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().display().to_string();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.insert(path.trim_start_matches("./").to_string(), text);
        }
    }
    files
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP GET on loopback; `None` until something answers.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .ok()?
    .ok()?;
    (!response.is_empty()).then_some(response)
}

type Agent = QapiService<QgaStreamTokio<WriteHalf<UnixStream>>>;

/// What a fresh VM booted from a built image shows.
#[derive(Debug)]
pub struct Booted {
    /// The raw HTTP response (status line, headers, body) for the path asked for.
    pub http: String,
    /// The stdout of each command run through the guest agent, in order.
    pub outputs: Vec<String>,
}

/// Runs `argv` in the guest through the agent and returns its stdout.
async fn agent_exec(agent: &Agent, argv: &[&str]) -> String {
    let started = agent
        .execute(qga::guest_exec {
            path: argv[0].to_string(),
            arg: Some(argv[1..].iter().map(|a| a.to_string()).collect()),
            env: None,
            input_data: None,
            capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
        })
        .await
        .expect("guest-exec");
    loop {
        let status = agent
            .execute(qga::guest_exec_status { pid: started.pid })
            .await
            .expect("guest-exec-status");
        if status.exited {
            return String::from_utf8_lossy(&status.out_data.unwrap_or_default()).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Boots `image` (of `format`) in a fresh VM under TCG with `-snapshot`, waits until the guest
/// answers HTTP on port 8080 for `http_path` (forwarded from a free loopback port), then runs
/// `commands` inside through the guest agent (the image needs `qemu-guest-agent`).
pub async fn boot_and_check(
    image: &Path,
    format: &str,
    http_path: &str,
    commands: &[&[&str]],
) -> Booted {
    let port = free_port();
    let sockets = tempfile::tempdir().unwrap();
    let agent_socket = sockets.path().join("qga.sock");
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-display", "none", "-accel", "tcg"])
        .args(["-m", "1024", "-snapshot", "-serial", "null"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format={format}",
            image.display()
        ))
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080"))
        .args(["-device", "virtio-net,netdev=n0"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            agent_socket.display()
        ))
        .args(["-device", "virtio-serial,id=vser0"])
        .args([
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu");
    let deadline = Instant::now() + Duration::from_secs(300);
    let http = loop {
        if let Some(r) = http_get(port, http_path).await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the built image did not serve HTTP"
        );
        if let Ok(Some(status)) = qemu.try_wait() {
            panic!("qemu exited: {status}");
        }
        // Polling is the only way to see a guest's port from the host: user-mode networking
        // accepts connections before the guest listens.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The guest is up; its agent answers once it has opened the port (`guest-sync` waits).
    let stream = UnixStream::connect(&agent_socket)
        .await
        .expect("connect to the guest agent socket");
    let (agent, events) = QgaStreamTokio::open(stream).into_parts();
    events.spawn_tokio();
    tokio::time::timeout(Duration::from_secs(120), agent.guest_sync(4242))
        .await
        .expect("the guest agent did not answer within 120 s")
        .expect("guest-sync");
    let mut outputs = Vec::new();
    for argv in commands {
        outputs.push(agent_exec(&agent, argv).await);
    }
    qemu.kill().await.unwrap();
    Booted { http, outputs }
}
