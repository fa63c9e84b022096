//! SSH communicator benchmark against a local OpenSSH server: connect time, 100 inline commands
//! on one connection (per-command latency) and a 1,000-file directory upload (throughput).
//!
//! Run with `cargo bench -p kiln-comm --bench ssh`.

use std::time::{Duration, Instant};

use kiln_comm::ssh::{Secret, SshCommunicator, SshConfig};
use kiln_comm::{Communicator, ExitStatus, RemoteCommand, UploadOptions, UploadSource};
use kiln_testkit::{ensure_password_user, Sshd, SshdOptions};

const COMMANDS: usize = 100;
const FILES: usize = 1000;
const FILE_SIZE: usize = 8 * 1024;
const BIG_FILE: usize = 64 * 1024 * 1024;

#[tokio::main]
async fn main() {
    let Some(sshd) = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    }) else {
        return;
    };
    let config = SshConfig {
        ssh_host: Some("127.0.0.1".into()),
        ssh_port: sshd.port(),
        ssh_username: Some("root".into()),
        ssh_private_key_file: Some(sshd.client_key()),
        ..Default::default()
    };
    let started = Instant::now();
    let comm = SshCommunicator::connect(&config).await.expect("connect");
    println!("connect + login: {}", millis(started.elapsed()));

    commands(&comm, "as root (bash, with root's ~/.bashrc)").await;
    // A user whose login shell is `/bin/sh` shows the communicator's own cost per command.
    if ensure_password_user("kiln-ssh-test", "kiln bench") {
        let sh_user = SshCommunicator::connect(&SshConfig {
            ssh_username: Some("kiln-ssh-test".into()),
            ssh_private_key_file: None,
            ssh_password: Some(Secret::new("kiln bench")),
            ..config.clone()
        })
        .await
        .expect("connect as the /bin/sh user");
        commands(&sh_user, "as a /bin/sh user").await;
    }

    let local = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        let dir = local.path().join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..FILE_SIZE).map(|j| (i * 31 + j) as u8).collect();
        std::fs::write(dir.join(format!("f{i}")), content).unwrap();
    }
    let remote = tempfile::tempdir().unwrap();
    let started = Instant::now();
    comm.upload_dir(
        local.path(),
        remote.path().to_str().unwrap(),
        &UploadOptions::default(),
    )
    .await
    .expect("upload_dir");
    let took = started.elapsed();
    let bytes = (FILES * FILE_SIZE) as f64;
    println!(
        "upload_dir of {FILES} files x {} KiB: {}, {:.1} MiB/s, {:.0} files/s",
        FILE_SIZE / 1024,
        millis(took),
        bytes / took.as_secs_f64() / (1024.0 * 1024.0),
        FILES as f64 / took.as_secs_f64()
    );

    let started = Instant::now();
    let back = tempfile::tempdir().unwrap();
    comm.download_dir(remote.path().to_str().unwrap(), back.path())
        .await
        .expect("download_dir");
    let took = started.elapsed();
    println!(
        "download_dir of the same tree: {}, {:.1} MiB/s",
        millis(took),
        bytes / took.as_secs_f64() / (1024.0 * 1024.0)
    );

    let big: Vec<u8> = (0..BIG_FILE).map(|i| (i % 251) as u8).collect();
    let dest = remote.path().join("big");
    let started = Instant::now();
    comm.upload(
        UploadSource::Bytes(big),
        dest.to_str().unwrap(),
        &UploadOptions::default(),
    )
    .await
    .expect("upload");
    let took = started.elapsed();
    println!(
        "upload of one {} MiB file: {}, {:.1} MiB/s",
        BIG_FILE / (1024 * 1024),
        millis(took),
        BIG_FILE as f64 / took.as_secs_f64() / (1024.0 * 1024.0)
    );
}

/// Runs [`COMMANDS`] inline commands one after the other and prints their latency.
async fn commands(comm: &SshCommunicator, label: &str) {
    let mut latencies = Vec::with_capacity(COMMANDS);
    for i in 0..COMMANDS {
        let cmd = RemoteCommand {
            command: format!("echo {i}"),
            ..Default::default()
        };
        let started = Instant::now();
        let status = comm.exec(&cmd, &mut |_, _: &str| {}).await.expect("exec");
        latencies.push(started.elapsed());
        assert_eq!(status, ExitStatus::Code(0));
    }
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    println!(
        "{COMMANDS} inline commands {label}: total {}, mean {}, p50 {}, p95 {}, max {}",
        millis(total),
        millis(total / COMMANDS as u32),
        millis(latencies[COMMANDS / 2]),
        millis(latencies[COMMANDS * 95 / 100]),
        millis(latencies[COMMANDS - 1]),
    );
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
