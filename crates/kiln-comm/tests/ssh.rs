//! The SSH communicator against a real OpenSSH server on loopback (`kiln_testkit::Sshd`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_comm::ssh::{
    AttemptError, ConnectError, HostKeyTrust, PublicKey, SshCommunicator, SshConfig, SshKey,
};
use kiln_comm::{
    CommError, Communicator, ExitStatus, RemoteCommand, Stream, UploadOptions, UploadSource,
};
use kiln_testkit::{ensure_password_user, free_port, Sshd, SshdOptions};

/// Starts an sshd, or returns from the test when sshd is not installed (outside CI).
macro_rules! sshd {
    () => {
        sshd!(SshdOptions::default())
    };
    ($options:expr) => {
        match Sshd::start_with($options) {
            Some(sshd) => sshd,
            None => return,
        }
    };
}

fn config(sshd: &Sshd) -> SshConfig {
    SshConfig {
        ssh_host: Some("127.0.0.1".into()),
        ssh_port: sshd.port(),
        ssh_username: Some("root".into()),
        ssh_private_key_file: Some(sshd.client_key()),
        ssh_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

async fn connect(sshd: &Sshd) -> SshCommunicator {
    SshCommunicator::connect(&config(sshd))
        .await
        .unwrap_or_else(|e| panic!("connect: {}\nsshd log:\n{}", chain(&e), sshd.log()))
}

/// An error and its sources, one per line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!("\n  {e}"));
        source = e.source();
    }
    text
}

type Lines = Vec<(Stream, String)>;

async fn run(comm: &SshCommunicator, cmd: RemoteCommand) -> (ExitStatus, Lines) {
    let mut lines = Vec::new();
    let status = comm
        .exec(&cmd, &mut |stream, line: &str| {
            lines.push((stream, line.to_owned()))
        })
        .await
        .expect("exec");
    (status, lines)
}

/// The first stdout line of a command that must succeed.
async fn first_line(comm: &SshCommunicator, line: &str) -> String {
    let (status, lines) = run(comm, command(line)).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    of(&lines, Stream::Stdout)[0].to_owned()
}

fn command(line: &str) -> RemoteCommand {
    RemoteCommand {
        command: line.into(),
        ..Default::default()
    }
}

/// The lines of one stream. Lines about `pyenv` are dropped: on the development machine, root's
/// `~/.bashrc` runs `pyenv init`, which complains when shells start side by side.
fn of(lines: &Lines, stream: Stream) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, line)| *s == stream && !line.contains("pyenv"))
        .map(|(_, l)| l.as_str())
        .collect()
}

#[tokio::test]
async fn exec_streams_output_and_returns_exit_codes() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let (status, lines) = run(
        &comm,
        command("echo out; echo err >&2; printf partial; exit 3"),
    )
    .await;
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(of(&lines, Stream::Stdout), ["out", "partial"]);
    assert_eq!(of(&lines, Stream::Stderr), ["err"]);
    assert_eq!(run(&comm, command("true")).await.0, ExitStatus::Code(0));
    assert_eq!(
        run(&comm, command("kill -TERM $$")).await.0,
        ExitStatus::Signal(15)
    );
}

#[tokio::test]
async fn exec_sets_env_and_workdir() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("a dir with 'quotes' and \"more\"");
    std::fs::create_dir(&workdir).unwrap();
    let cmd = RemoteCommand {
        command: r#"pwd; printf '%s\n' "$A" "$B""#.into(),
        env: vec![
            ("A".into(), "it's $HOME; `x`".into()),
            ("B".into(), "line1\nline2".into()),
        ],
        workdir: Some(workdir.display().to_string()),
        pty: false,
    };
    let (status, lines) = run(&comm, cmd).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    let expected = [
        workdir.to_str().unwrap(),
        "it's $HOME; `x`",
        "line1",
        "line2",
    ];
    assert_eq!(of(&lines, Stream::Stdout), expected);

    let missing = RemoteCommand {
        workdir: Some("/nonexistent/dir".into()),
        ..command("echo should not run")
    };
    let (status, lines) = run(&comm, missing).await;
    assert_ne!(status, ExitStatus::Code(0));
    assert!(of(&lines, Stream::Stdout).is_empty(), "{lines:?}");
}

#[tokio::test]
async fn exec_with_a_pty() {
    let sshd = sshd!();
    let comm = SshCommunicator::connect(&SshConfig {
        ssh_pty: true,
        ..config(&sshd)
    })
    .await
    .unwrap();
    let (status, lines) = run(&comm, command("tty")).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert!(
        of(&lines, Stream::Stdout)[0].starts_with("/dev/pts/"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_command_that_prints_a_lot() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let (status, lines) = run(&comm, command("seq 1 200000; seq 1 1000 >&2")).await;
    assert_eq!(status, ExitStatus::Code(0));
    let stdout = of(&lines, Stream::Stdout);
    assert_eq!(stdout.len(), 200_000);
    assert_eq!(stdout[199_999], "200000");
    assert_eq!(of(&lines, Stream::Stderr).len(), 1000);
}

#[tokio::test]
async fn host_key_checks() {
    let sshd = sshd!();
    let fingerprint = sshd.host_key_fingerprint();

    let comm = connect(&sshd).await;
    let first = comm.host_key();
    assert_eq!(first.trust, HostKeyTrust::FirstUse);
    assert_eq!(first.fingerprint, fingerprint);

    let known = PublicKey::from_openssh(&sshd.host_public_key()).unwrap();
    let comm = SshCommunicator::connect(&SshConfig {
        known_host_key: Some(known),
        ..config(&sshd)
    })
    .await
    .unwrap();
    assert_eq!(comm.host_key().trust, HostKeyTrust::Known);

    let comm = SshCommunicator::connect(&SshConfig {
        ssh_host_key_fingerprint: Some(fingerprint.clone()),
        ..config(&sshd)
    })
    .await
    .unwrap();
    assert_eq!(comm.host_key().trust, HostKeyTrust::Pinned);

    // A wrong key fails at once, not after ssh_timeout.
    let other = SshKey::generate_ed25519().unwrap();
    let started = Instant::now();
    let error = SshCommunicator::connect(&SshConfig {
        known_host_key: Some(other.public_key().clone()),
        ssh_timeout: Duration::from_secs(60),
        ..config(&sshd)
    })
    .await
    .err()
    .expect("a wrong known key is refused");
    assert!(started.elapsed() < Duration::from_secs(5));
    match &error {
        ConnectError::HostKeyMismatch { got, .. } => assert_eq!(got, &fingerprint),
        other => panic!("expected a host key mismatch, got {}", chain(other)),
    }

    let error = SshCommunicator::connect(&SshConfig {
        ssh_host_key_fingerprint: Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        ..config(&sshd)
    })
    .await
    .err()
    .expect("a wrong pin is refused");
    assert!(
        matches!(error, ConnectError::HostKeyMismatch { .. }),
        "{}",
        chain(&error)
    );
}

/// Connects with `config`, which must fail; returns the error and how long the attempt took.
async fn failed_connect(config: &SshConfig) -> (ConnectError, Duration) {
    let started = Instant::now();
    let error = SshCommunicator::connect(config)
        .await
        .err()
        .expect("the connection fails");
    (error, started.elapsed())
}

/// The error of a connection that ran out of `ssh_timeout` names how long it waited
/// (`... after 1.0s`), and that is the time the attempt took (`measured`).
fn assert_names_the_wait(error: &ConnectError, measured: Duration) {
    let text = error.to_string();
    let shown = text
        .rsplit_once(" after ")
        .and_then(|(_, time)| time.strip_suffix('s'))
        .and_then(|secs| secs.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no waited time at the end of `{text}`"));
    let measured = measured.as_secs_f64();
    assert!(
        shown <= measured + 0.05 && shown >= measured - 0.3,
        "`{text}` after {measured:.2}s"
    );
    let ConnectError::TimedOut { waited, .. } = error else {
        panic!("expected a timeout, got {}", chain(error));
    };
    assert_eq!(
        format!("{:.1}", waited.as_secs_f64()),
        format!("{shown:.1}")
    );
}

#[tokio::test]
async fn timeout_names_a_refused_connection() {
    let config = SshConfig {
        ssh_host: Some("127.0.0.1".into()),
        ssh_port: free_port(),
        ssh_username: Some("root".into()),
        ephemeral_key: Some(SshKey::generate_ed25519().unwrap()),
        ssh_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let (error, waited) = failed_connect(&config).await;
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_names_the_wait(&error, waited);
    match error {
        ConnectError::TimedOut {
            last: AttemptError::Tcp { source, .. },
            ..
        } => assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected a refused connection, got {}", chain(&other)),
    }
}

#[tokio::test]
async fn timeout_names_a_missing_banner() {
    // Accepts TCP connections and never speaks, like a NAT port forward before the guest is up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = SshConfig {
        ssh_host: Some("127.0.0.1".into()),
        ssh_port: port,
        ssh_username: Some("root".into()),
        ephemeral_key: Some(SshKey::generate_ed25519().unwrap()),
        ssh_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (error, measured) = failed_connect(&config).await;
    hold.abort();
    let text = chain(&error);
    assert!(text.contains("sent no SSH banner"), "{text}");
    assert!(matches!(
        error,
        ConnectError::TimedOut {
            last: AttemptError::NoBanner { .. },
            ..
        }
    ));
    assert_names_the_wait(&error, measured);
    assert!(measured >= config.ssh_timeout, "gave up after {measured:?}");
}

#[tokio::test]
async fn rejected_logins_are_named_and_not_retried_forever() {
    let sshd = sshd!();
    let stranger = SshConfig {
        ssh_private_key_file: None,
        ephemeral_key: Some(SshKey::generate_ed25519().unwrap()),
        ssh_handshake_attempts: 2,
        ..config(&sshd)
    };
    let error = SshCommunicator::connect(&stranger)
        .await
        .err()
        .expect("unknown key");
    assert!(
        matches!(error, ConnectError::AuthRejected { attempts: 2, .. }),
        "{}",
        chain(&error)
    );

    // With many attempts allowed, the timeout ends it and names the rejection.
    let patient = SshConfig {
        ssh_handshake_attempts: 1000,
        ssh_timeout: Duration::from_secs(2),
        ..stranger
    };
    let (error, measured) = failed_connect(&patient).await;
    let text = chain(&error);
    assert!(text.contains("rejected the login as `root`"), "{text}");
    assert!(matches!(
        error,
        ConnectError::TimedOut {
            last: AttemptError::AuthRejected { .. },
            ..
        }
    ));
    assert_names_the_wait(&error, measured);
    // It gives up when the next attempt (at most a second away) would start too late.
    assert!(
        measured >= Duration::from_secs(1),
        "gave up after {measured:?}"
    );

    let password = SshConfig {
        ssh_private_key_file: None,
        ssh_password: Some(kiln_comm::ssh::Secret::new("wrong")),
        ssh_handshake_attempts: 1,
        ..config(&sshd)
    };
    let error = SshCommunicator::connect(&password)
        .await
        .err()
        .expect("wrong password");
    assert!(
        matches!(error, ConnectError::AuthRejected { .. }),
        "{}",
        chain(&error)
    );
}

#[tokio::test]
async fn ephemeral_key() {
    let key = SshKey::generate_ed25519().unwrap();
    let sshd = sshd!(SshdOptions {
        authorized_keys: vec![key.authorized_keys_line()],
        ..Default::default()
    });
    let comm = SshCommunicator::connect(&SshConfig {
        ssh_private_key_file: None,
        ephemeral_key: Some(key),
        ..config(&sshd)
    })
    .await
    .unwrap();
    assert_eq!(first_line(&comm, "id -u").await, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_across_an_sshd_restart_then_reconnect() {
    let mut sshd = sshd!();
    let comm = std::sync::Arc::new(connect(&sshd).await);
    let fingerprint = comm.host_key().fingerprint;

    // A running command sees the disconnect, not a failure.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let exec = tokio::spawn({
        let comm = comm.clone();
        async move {
            let mut on_line = move |_, _: &str| {
                started_tx.send(()).ok();
            };
            comm.exec(&command("echo started; sleep 60"), &mut on_line)
                .await
        }
    });
    tokio::task::block_in_place(|| {
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the command starts");
        sshd.restart();
    });
    let restarted = Instant::now();
    let status = exec.await.unwrap();
    assert!(matches!(status, Ok(ExitStatus::Disconnected)), "{status:?}");
    assert!(restarted.elapsed() < Duration::from_secs(10));

    // The old session is gone for good.
    let after = comm.exec(&command("true"), &mut |_, _: &str| {}).await;
    assert!(
        matches!(
            after,
            Err(CommError::Disconnected) | Ok(ExitStatus::Disconnected)
        ),
        "{after:?}"
    );

    comm.reconnect().await.unwrap();
    assert_eq!(first_line(&comm, "echo back").await, "back");
    assert_eq!(comm.host_key().fingerprint, fingerprint);
}

/// Every file under `root`, by relative path, with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, into);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                into.insert(path.strip_prefix(root).unwrap().to_owned(), bytes);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// 1,000 small files in nested directories, some with spaces and quotes in their names.
fn make_tree(root: &Path) {
    for i in 0..1000u32 {
        let dir = root
            .join(format!("dir {}", i % 10))
            .join(format!("it's {}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..(i * 37 % 4096)).map(|j| (i ^ j) as u8).collect();
        std::fs::write(dir.join(format!("file \"{i}\".bin")), content).unwrap();
    }
}

#[tokio::test]
async fn upload_and_download_a_tree_of_1000_files() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let remote_root = tempfile::tempdir().unwrap();
    let remote = remote_root.path().join("dest with space and 'quote'");
    let sessions = sshd.sessions_started();
    comm.upload_dir(
        local.path(),
        remote.to_str().unwrap(),
        &UploadOptions::default(),
    )
    .await
    .unwrap();
    let sent = tree(local.path());
    assert_eq!(sent.len(), 1000);
    assert!(sent == tree(&remote), "the uploaded tree differs");
    // One tar stream: a command or two on the machine, not one per file. sshd logged the
    // session before running it; the fixture's reader thread may take a moment to see the line.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sshd.sessions_started() == sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let upload_sessions = sshd.sessions_started() - sessions;
    assert!(
        (1..=3).contains(&upload_sessions),
        "{upload_sessions} sessions for one directory upload"
    );

    let back = tempfile::tempdir().unwrap();
    comm.download_dir(remote.to_str().unwrap(), back.path())
        .await
        .unwrap();
    assert!(sent == tree(back.path()), "the downloaded tree differs");

    let missing = comm.download_dir("/nonexistent/dir", back.path()).await;
    assert!(matches!(missing, Err(CommError::Remote(_))), "{missing:?}");
}

#[tokio::test]
async fn upload_dir_applies_mode_to_files_and_owner() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir(local.path().join("sub")).unwrap();
    std::fs::write(local.path().join("sub/script.sh"), "echo hi\n").unwrap();
    let remote = tempfile::tempdir().unwrap();
    let opts = UploadOptions {
        mode: Some(0o750),
        owner: Some("nobody".into()),
    };
    comm.upload_dir(local.path(), remote.path().to_str().unwrap(), &opts)
        .await
        .unwrap();
    let script = std::fs::metadata(remote.path().join("sub/script.sh")).unwrap();
    assert_eq!(script.permissions().mode() & 0o7777, 0o750);
    assert_eq!(script.uid(), 65534);
}

#[tokio::test]
async fn single_file_upload_with_mode_and_owner_then_download() {
    let sshd = sshd!();
    let comm = connect(&sshd).await;
    let remote = tempfile::tempdir().unwrap();
    let dest = remote.path().join("my 'script'.sh");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let opts = UploadOptions {
        mode: Some(0o640),
        owner: Some("nobody:nogroup".into()),
    };
    comm.upload(
        UploadSource::Bytes(bytes.clone()),
        dest.to_str().unwrap(),
        &opts,
    )
    .await
    .unwrap();
    let metadata = std::fs::metadata(&dest).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o640);
    assert_eq!(metadata.uid(), 65534);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("source");
    std::fs::write(&source, b"from a file\n").unwrap();
    let dest2 = remote.path().join("copy");
    comm.upload(
        UploadSource::File(source),
        dest2.to_str().unwrap(),
        &UploadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest2).unwrap(), b"from a file\n");

    let back = local.path().join("back");
    comm.download(dest.to_str().unwrap(), &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), bytes);

    let error = comm
        .upload(
            UploadSource::Bytes(b"x".to_vec()),
            "/nonexistent/dir/file",
            &UploadOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("No such file"), "{error}");
    let error = comm.download("/nonexistent/file", &back).await.unwrap_err();
    assert!(matches!(error, CommError::Remote(_)), "{error:?}");
    assert!(!back.exists(), "a failed download leaves no file");
}

#[tokio::test]
async fn through_a_bastion() {
    let bastion = sshd!();
    let target = sshd!();
    let comm = SshCommunicator::connect(&SshConfig {
        ssh_bastion_host: Some("127.0.0.1".into()),
        ssh_bastion_port: bastion.port(),
        ssh_bastion_private_key_file: Some(bastion.client_key()),
        ..config(&target)
    })
    .await
    .unwrap_or_else(|e| panic!("{}\nbastion:\n{}", chain(&e), bastion.log()));
    assert_eq!(first_line(&comm, "echo through").await, "through");
    assert_eq!(comm.host_key().fingerprint, target.host_key_fingerprint());
    let jump = comm
        .bastion_host_key()
        .expect("the bastion's key is reported");
    assert_eq!(jump.fingerprint, bastion.host_key_fingerprint());
    assert_eq!(jump.trust, HostKeyTrust::FirstUse);
    assert!(
        bastion.log().contains("Accepted publickey for root"),
        "{}",
        bastion.log()
    );
}

/// The user `password_login` and `a_bastion_with_its_own_user_and_password` log in as.
const PASSWORD_USER: &str = "kiln-ssh-test";
const PASSWORD: &str = "correct horse";

/// `ssh_bastion_username` and `ssh_bastion_password`: the jump host takes another user, by
/// password (no key is offered to it), while the machine behind it takes root's key.
#[tokio::test]
async fn a_bastion_with_its_own_user_and_password() {
    let bastion = sshd!(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    let target = sshd!();
    if !ensure_password_user(PASSWORD_USER, PASSWORD) {
        return;
    }
    let through = |password: &str| SshConfig {
        ssh_bastion_host: Some("127.0.0.1".into()),
        ssh_bastion_port: bastion.port(),
        ssh_bastion_username: Some(PASSWORD_USER.into()),
        ssh_bastion_password: Some(kiln_comm::ssh::Secret::new(password)),
        ssh_handshake_attempts: 1,
        ..config(&target)
    };
    let comm = SshCommunicator::connect(&through(PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("{}\nbastion:\n{}", chain(&e), bastion.log()));
    assert_eq!(first_line(&comm, "id -un").await, "root");
    let log = bastion.log();
    assert!(
        log.contains(&format!(
            "Accepted password for {PASSWORD_USER} from 127.0.0.1"
        )),
        "{log}"
    );
    assert!(!log.contains("Accepted publickey"), "{log}");
    assert!(
        target.log().contains("Accepted publickey for root"),
        "{}",
        target.log()
    );

    // A wrong password is refused by the jump host, which the error names.
    let (error, _) = failed_connect(&through("wrong")).await;
    match &error {
        ConnectError::AuthRejected {
            target: who, user, ..
        } => {
            assert_eq!(
                who,
                &format!("{PASSWORD_USER}@127.0.0.1:{}", bastion.port())
            );
            assert_eq!(user, PASSWORD_USER);
        }
        other => panic!("expected a rejected login, got {}", chain(other)),
    }
}

/// `ssh_bastion_host_key_fingerprint` pins the jump host's key: another key is refused at once,
/// naming the jump host, and the right one is reported as pinned.
#[tokio::test]
async fn a_bastion_with_a_pinned_host_key() {
    let bastion = sshd!();
    let target = sshd!();
    let through = |pin: String| SshConfig {
        ssh_bastion_host: Some("127.0.0.1".into()),
        ssh_bastion_port: bastion.port(),
        ssh_bastion_private_key_file: Some(bastion.client_key()),
        ssh_bastion_host_key_fingerprint: Some(pin),
        ..config(&target)
    };
    let started = Instant::now();
    // The target's key is not the bastion's.
    let error = SshCommunicator::connect(&through(target.host_key_fingerprint()))
        .await
        .err()
        .expect("a wrong bastion key is refused");
    match &error {
        ConnectError::HostKeyMismatch {
            target: who,
            expected,
            got,
        } => {
            assert_eq!(who, &format!("root@127.0.0.1:{}", bastion.port()));
            assert_eq!(expected, &target.host_key_fingerprint());
            assert_eq!(got, &bastion.host_key_fingerprint());
        }
        other => panic!("{}", chain(other)),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a mismatch is not retried until ssh_timeout"
    );
    assert!(
        !target.log().contains("Accepted publickey"),
        "the machine was reached through an unverified bastion"
    );
    let comm = SshCommunicator::connect(&through(bastion.host_key_fingerprint()))
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(first_line(&comm, "echo pinned").await, "pinned");
    assert_eq!(
        comm.bastion_host_key().map(|k| k.trust),
        Some(HostKeyTrust::Pinned)
    );
}

/// A machine whose SSH port opens late is logged in to soon after it opens: attempts back off to
/// at most a second, never a fixed multi-second sleep.
#[tokio::test]
async fn a_port_that_opens_late_is_reached_promptly() {
    let port = free_port();
    // A first server only provides the client key; a second one, accepting that key, starts
    // late on `port`.
    let keys = sshd!();
    let connecting = {
        let config = SshConfig {
            ssh_port: port,
            ..config(&keys)
        };
        tokio::spawn(async move {
            let result = SshCommunicator::connect(&config).await;
            (result, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !connecting.is_finished(),
        "connected before the port opened"
    );
    let key = std::fs::read_to_string(format!("{}.pub", keys.client_key().display())).unwrap();
    let late = tokio::task::spawn_blocking(move || {
        let sshd = Sshd::start_with(SshdOptions {
            authorized_keys: vec![key.trim().to_owned()],
            port: Some(port),
            ..Default::default()
        })
        .expect("sshd");
        (sshd, Instant::now())
    });
    let (late, listening) = late.await.unwrap();
    let (result, connected) = connecting.await.unwrap();
    let comm = result.unwrap_or_else(|e| panic!("{}\n{}", chain(&e), late.log()));
    assert_eq!(comm.host_key().fingerprint, late.host_key_fingerprint());
    let after = connected.saturating_duration_since(listening);
    assert!(
        after < Duration::from_secs(3),
        "logged in {after:?} after the port opened"
    );
}

#[tokio::test]
async fn password_login() {
    let sshd = sshd!(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    if !ensure_password_user(PASSWORD_USER, PASSWORD) {
        return;
    }
    let login = SshConfig {
        ssh_username: Some(PASSWORD_USER.into()),
        ssh_private_key_file: None,
        ssh_password: Some(kiln_comm::ssh::Secret::new(PASSWORD)),
        ..config(&sshd)
    };
    let comm = SshCommunicator::connect(&login)
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), sshd.log()));
    let (status, lines) = run(&comm, command("id -un")).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(lines, [(Stream::Stdout, PASSWORD_USER.to_owned())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commands_share_one_connection() {
    let sshd = sshd!();
    let comm = std::sync::Arc::new(connect(&sshd).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let comm = comm.clone();
        tasks.spawn(async move {
            let (status, lines) = run(&comm, command(&format!("sleep 1; echo {i}"))).await;
            (i, status, lines)
        });
    }
    let started = Instant::now();
    while let Some(result) = tasks.join_next().await {
        let (i, status, lines) = result.unwrap();
        assert_eq!(status, ExitStatus::Code(0));
        assert_eq!(of(&lines, Stream::Stdout), [i.to_string()]);
    }
    // Run side by side, not one after the other.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let logins = sshd.log().matches("Accepted publickey").count();
    assert_eq!(
        logins,
        1,
        "one connection for all commands:\n{}",
        sshd.log()
    );
}

#[tokio::test]
async fn rsa_private_key_file() {
    // OpenSSH 8.8+ refuses SHA-1 `ssh-rsa` signatures: this checks that rsa-sha2 is negotiated.
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("id_rsa");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    let public = std::fs::read_to_string(keys.path().join("id_rsa.pub")).unwrap();
    let sshd = sshd!(SshdOptions {
        authorized_keys: vec![public.trim().to_owned()],
        ..Default::default()
    });
    let comm = SshCommunicator::connect(&SshConfig {
        ssh_private_key_file: Some(path),
        ..config(&sshd)
    })
    .await
    .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), sshd.log()));
    assert_eq!(first_line(&comm, "echo rsa").await, "rsa");
}

/// A TCP proxy to `port` that can go silent without closing anything, like a machine that lost
/// power: returns its port and a switch that stops all forwarding.
async fn freezable_proxy(port: u16) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let (mut client, mut server) = (client, server);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = async { frozen.wait_for(|frozen| *frozen).await.is_ok() } => {
                        // Hold both sockets open, forwarding nothing.
                        std::future::pending::<()>().await
                    }
                }
            });
        }
    });
    (proxy_port, freeze)
}

#[tokio::test]
async fn keep_alives_detect_a_machine_that_went_silent() {
    let sshd = sshd!();
    let (port, freeze) = freezable_proxy(sshd.port()).await;
    let comm = SshCommunicator::connect(&SshConfig {
        ssh_port: port,
        ssh_keep_alive_interval: Duration::from_millis(200),
        ..config(&sshd)
    })
    .await
    .unwrap();
    assert_eq!(
        run(&comm, command("echo alive")).await.0,
        ExitStatus::Code(0)
    );
    let mut on_line = |_, line: &str| {
        if line == "started" {
            freeze.send(true).unwrap();
        }
    };
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        comm.exec(&command("echo started; sleep 60"), &mut on_line),
    )
    .await
    .expect("the keep-alives notice the silence");
    assert!(matches!(status, Ok(ExitStatus::Disconnected)), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reconnect_requires_the_host_key_accepted_on_first_use() {
    let mut sshd = sshd!();
    let comm = connect(&sshd).await;
    assert_eq!(comm.host_key().trust, HostKeyTrust::FirstUse);
    sshd.restart_with_new_host_key();
    let error = comm.reconnect().await.unwrap_err();
    let CommError::Connect(source) = &error else {
        panic!("expected a connect error, got {error:?}");
    };
    let mismatch = source.downcast_ref::<ConnectError>();
    assert!(
        matches!(mismatch, Some(ConnectError::HostKeyMismatch { .. })),
        "{}",
        chain(&error)
    );
}
