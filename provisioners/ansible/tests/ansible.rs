//! The `ansible` provisioner against a real OpenSSH server on loopback (`kiln_testkit::Sshd`)
//! with Debian's `ansible-core`: the playbook's work is checked over SSH afterwards, and so is
//! what must not be left behind (temp files, `ssh` control masters, Ansible processes).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_comm::ssh::{SshCommunicator, SshConfig};
use kiln_comm::{Communicator, ExitStatus, RemoteCommand};
use kiln_core::component::{ConnInfo, ProvisionCtx, Registry};
use kiln_core::event::{Event, EventKind, EventSink, Redactor};
use kiln_core::plan::Config;
use kiln_core::runner::{BuildCtx, Cancel, OnError};
use kiln_core::sensitive::Sensitive;
use kiln_testkit::Sshd;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// Starts an sshd, or returns from the test when sshd or Ansible is missing (outside CI).
macro_rules! sshd {
    () => {{
        if !ansible_installed() {
            return;
        }
        match Sshd::start() {
            Some(sshd) => sshd,
            None => return,
        }
    }};
}

fn ansible_installed() -> bool {
    let found = Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("`ansible-playbook` is missing: install `ansible-core` (CI must not skip)");
        }
        eprintln!("note: skipping: `ansible-playbook` is missing (apt-get install ansible-core)");
    }
    found
}

/// How the test hands the private key over.
enum Key {
    File,
    InMemory,
}

fn conn(sshd: &Sshd, key: Key, host_key: String) -> ConnInfo {
    let (file, memory) = match key {
        Key::File => (Some(sshd.client_key()), None),
        Key::InMemory => {
            let text = std::fs::read_to_string(sshd.client_key()).unwrap();
            // As a builder holding a generated key would have it: no trailing newline.
            (None, Some(Sensitive::new(text.trim_end().to_string())))
        }
    };
    ConnInfo {
        conn_type: "ssh".to_string(),
        host: Some("127.0.0.1".to_string()),
        port: Some(sshd.port()),
        user: Some("root".to_string()),
        ssh_private_key_file: file,
        ssh_private_key: memory,
        ssh_host_key: Some(host_key),
        ..ConnInfo::default()
    }
}

fn build_ctx() -> (BuildCtx, UnboundedReceiver<Event>) {
    let (sink, rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let ctx = BuildCtx {
        run_id: sink.run_id(),
        build_name: "kiln.null.first".to_string(),
        source_type: "null".to_string(),
        source_name: "first".to_string(),
        events: sink.for_build("kiln.null.first"),
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    };
    (ctx, rx)
}

fn config(attrs: Value) -> Config {
    Config::from_json("ansible", attrs)
}

fn provisioner(attrs: Value) -> Box<dyn kiln_core::component::Provisioner> {
    let mut registry = Registry::default();
    ansible::register(&mut registry);
    registry.provisioners["ansible"]
        .configure(&config(attrs))
        .unwrap_or_else(|d| panic!("configure failed: {d}"))
}

/// An error and its sources on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    kiln_core::runner::error_chain(error).join(": ")
}

/// Runs the provisioner made of `attrs` against `conn`; returns its result and output lines.
async fn run(attrs: Value, conn: &ConnInfo) -> (Result<(), String>, Vec<String>) {
    let (ctx, mut rx) = build_ctx();
    let p = provisioner(attrs);
    let result = p
        .provision(&ProvisionCtx {
            build: &ctx,
            comm: &kiln_comm::NoneCommunicator,
            conn,
        })
        .await
        .map_err(|e| chain(e.as_ref()));
    let mut lines = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let EventKind::Output { source, line, .. } = event.kind {
            assert_eq!(source, "ansible");
            lines.push(line);
        }
    }
    (result, lines)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

/// What a kept inventory tells about the run's temp files.
struct Kept {
    inventory: Value,
    key_file: PathBuf,
    /// The run's private directory (key, `known_hosts`, control sockets).
    private_dir: PathBuf,
}

fn kept_inventory(dir: &Path, alias: &str) -> Kept {
    let files = entries(dir);
    assert_eq!(files.len(), 1, "expected one kept inventory: {files:?}");
    let inventory: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let host = &inventory["all"]["hosts"][alias];
    let key_file = PathBuf::from(host["ansible_ssh_private_key_file"].as_str().unwrap());
    let ssh_args = host["ansible_ssh_args"].as_str().unwrap();
    let control = ssh_args
        .split("ControlPath=\"")
        .nth(1)
        .and_then(|rest| rest.split("/%C").next())
        .unwrap_or_else(|| panic!("no ControlPath in {ssh_args}"));
    let private_dir = Path::new(control).parent().unwrap().to_path_buf();
    Kept {
        inventory,
        key_file,
        private_dir,
    }
}

/// Pids of running processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Waits (a bounded while) until no process mentions `needle`: the kernel finishes killed
/// processes, and `ssh` control masters exit, shortly after they are told to.
async fn assert_no_process_mentions(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind mentioning {needle}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that the run's private directory, and every process using it, are gone.
async fn assert_private_dir_gone(kept: &Kept) {
    assert!(
        !kept.private_dir.exists(),
        "{} was left behind",
        kept.private_dir.display()
    );
    assert_no_process_mentions(&kept.private_dir.to_string_lossy()).await;
}

async fn ssh(sshd: &Sshd) -> SshCommunicator {
    let config = SshConfig {
        ssh_host: Some("127.0.0.1".into()),
        ssh_port: sshd.port(),
        ssh_username: Some("root".into()),
        ssh_private_key_file: Some(sshd.client_key()),
        ssh_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    SshCommunicator::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", chain(&e)))
}

/// Runs `command` over SSH; returns its exit status and stdout.
async fn remote(comm: &SshCommunicator, command: &str) -> (ExitStatus, String) {
    let mut out = String::new();
    let cmd = RemoteCommand {
        command: command.to_string(),
        ..Default::default()
    };
    let status = comm
        .exec(&cmd, &mut |stream, line: &str| {
            if stream == kiln_comm::Stream::Stdout {
                out.push_str(line);
                out.push('\n');
            }
        })
        .await
        .expect("exec");
    (status, out)
}

/// Removes the test's user (and its home) when dropped, even after a failed assertion. The
/// "machine" is this host, so `userdel` runs locally.
struct UserGuard(String);

impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .args(["-r", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

const CREATE_PLAYBOOK: &str = r#"
- hosts: web
  gather_facts: false
  tasks:
    - name: create the user
      ansible.builtin.user:
        name: "{{ new_user }}"
        shell: /bin/sh
    - name: write the file
      ansible.builtin.copy:
        dest: "{{ dest }}"
        content: "made by {{ packer_build_name }} for {{ new_user }}\n"
        owner: "{{ new_user }}"
        mode: "0640"
"#;

#[tokio::test]
async fn playbook_creates_a_user_and_a_file_over_direct_ssh() {
    let sshd = sshd!();
    let user = format!("kilnans{}", std::process::id());
    let _cleanup = UserGuard(user.clone());
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let playbook = write(work.path(), "site.yml", CREATE_PLAYBOOK);
    let dest = work.path().join("hello.txt");
    let inventory_dir = tempfile::tempdir().unwrap();

    let conn = conn(&sshd, Key::InMemory, sshd.host_public_key());
    let (result, lines) = run(
        json!({
            "playbook_file": playbook,
            "groups": ["web"],
            "host_alias": "machine-one",
            "extra_arguments": ["-e", json!({ "new_user": user, "dest": dest }).to_string()],
            "inventory_directory": inventory_dir.path(),
            "keep_inventory_file": true,
        }),
        &conn,
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e}\noutput:\n{}\nsshd:\n{}", lines.join("\n"), sshd.log()));
    assert!(
        lines.iter().any(|l| l.starts_with("PLAY RECAP")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("machine-one")
            && l.contains("changed=2")
            && l.contains("failed=0")),
        "{lines:?}"
    );

    // The playbook's work, checked over SSH.
    let comm = ssh(&sshd).await;
    let (status, _) = remote(&comm, &format!("id {user}")).await;
    assert_eq!(status, ExitStatus::Code(0), "user {user} does not exist");
    let (status, text) = remote(&comm, &format!("cat {}", dest.display())).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(text, format!("made by first for {user}\n"));
    let (_, owner_mode) = remote(&comm, &format!("stat -c '%U %a' {}", dest.display())).await;
    assert_eq!(owner_mode.trim(), format!("{user} 640"));

    // The kept inventory; the key written for the in-memory key, and everything else, is gone.
    let kept = kept_inventory(inventory_dir.path(), "machine-one");
    assert_eq!(
        kept.inventory["all"]["children"]["web"]["hosts"],
        json!({ "machine-one": {} })
    );
    assert!(
        kept.key_file.starts_with(&kept.private_dir),
        "{:?}",
        kept.key_file
    );
    assert_private_dir_gone(&kept).await;

    let (status, _) = remote(&comm, &format!("userdel -r {user}")).await;
    assert_eq!(status, ExitStatus::Code(0));
}

/// A host key of another machine.
fn other_host_key(dir: &Path) -> String {
    let path = dir.join("other_host_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_wrong_host_key_fails_even_with_host_key_checking_off() {
    let sshd = sshd!();
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    let playbook = write(
        work.path(),
        "touch.yml",
        &format!(
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: touch {}\n",
            marker.display()
        ),
    );
    let inventory_dir = tempfile::tempdir().unwrap();

    let conn = conn(&sshd, Key::File, other_host_key(work.path()));
    let (result, lines) = run(
        json!({
            "playbook_file": playbook,
            "ansible_env_vars": ["ANSIBLE_HOST_KEY_CHECKING=False"],
            "inventory_directory": inventory_dir.path(),
            "keep_inventory_file": true,
        }),
        &conn,
    )
    .await;
    let err = result.expect_err("ansible accepted a wrong host key");
    assert!(err.contains("exited with code 4"), "{err}");
    assert!(
        err.contains(&format!("playbook `{}`", playbook.display())),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Host key verification failed")),
        "{lines:?}"
    );
    assert!(
        !marker.exists(),
        "the playbook ran despite the wrong host key"
    );

    // The user's key file is used as it is; Kiln's own files are gone.
    let kept = kept_inventory(inventory_dir.path(), "default");
    assert_eq!(kept.key_file, sshd.client_key());
    assert_private_dir_gone(&kept).await;
}

#[tokio::test]
async fn a_failing_playbook_names_the_playbook_and_the_exit_code() {
    let sshd = sshd!();
    let work = tempfile::tempdir().unwrap();
    let playbook = write(
        work.path(),
        "fail.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.fail:\n        msg: kiln wants this to fail\n",
    );
    let inventory_dir = tempfile::tempdir().unwrap();

    let conn = conn(&sshd, Key::InMemory, sshd.host_public_key());
    let (result, lines) = run(
        json!({
            "playbook_file": playbook,
            "inventory_directory": inventory_dir.path(),
        }),
        &conn,
    )
    .await;
    let err = result.expect_err("a failing playbook succeeded");
    assert_eq!(
        err,
        format!(
            "`ansible-playbook` exited with code 2 running playbook `{}`",
            playbook.display()
        )
    );
    assert!(
        lines.iter().any(|l| l.contains("kiln wants this to fail")),
        "{lines:?}"
    );
    assert_eq!(entries(inventory_dir.path()), Vec::<PathBuf>::new());
}

/// How a running provisioner is stopped.
enum Stop {
    /// The build's cancel token fires; the provisioner returns an error.
    Cancel,
    /// Its future is dropped, as the runner does on cancellation and on `timeout`.
    Drop,
}

/// Stops the provisioner while `ansible-playbook` waits in a task, then checks that Ansible, its
/// shared SSH connection and every temp file are gone.
async fn stop_while_running(stop: Stop) {
    let sshd = sshd!();
    let work = tempfile::tempdir().unwrap();
    // The first task opens a shared SSH connection; the pause runs inside `ansible-playbook`.
    let playbook = write(
        work.path(),
        "wait.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: \"true\"\n    - name: wait here\n      ansible.builtin.pause:\n        seconds: 600\n",
    );
    let inventory_dir = tempfile::tempdir().unwrap();
    let conn = conn(&sshd, Key::InMemory, sshd.host_public_key());
    let p = provisioner(json!({
        "playbook_file": playbook,
        "inventory_directory": inventory_dir.path(),
    }));
    let (ctx, mut rx) = build_ctx();
    let pctx = ProvisionCtx {
        build: &ctx,
        comm: &kiln_comm::NoneCommunicator,
        conn: &conn,
    };
    let mut run = Box::pin(p.provision(&pctx));
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            r = &mut run => panic!("finished before cancellation: {r:?}\n{}", seen.join("\n")),
            ev = rx.recv() => {
                if let Some(EventKind::Output { line, .. }) = ev.map(|e| e.kind) {
                    let waiting = line.starts_with("TASK [wait here]");
                    seen.push(line);
                    if waiting {
                        break;
                    }
                }
            }
        }
    }
    // The inventory exists while Ansible runs; it names the run's private directory.
    let running = kept_inventory(inventory_dir.path(), "default");
    let inventory = entries(inventory_dir.path()).remove(0);
    assert!(!processes_mentioning(&inventory.to_string_lossy()).is_empty());
    assert!(!processes_mentioning(&running.private_dir.to_string_lossy()).is_empty());

    match stop {
        Stop::Cancel => {
            ctx.cancel.cancel.cancel();
            let err = tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .expect("cancellation did not stop the provisioner")
                .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("cancelled while running playbook"),
                "{err}"
            );
        }
        Stop::Drop => drop(run),
    }

    assert_private_dir_gone(&running).await;
    assert_no_process_mentions(&inventory.to_string_lossy()).await;
    assert_eq!(entries(inventory_dir.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn cancellation_kills_ansible_and_cleans_up() {
    stop_while_running(Stop::Cancel).await;
}

#[tokio::test]
async fn dropping_the_run_kills_ansible_and_cleans_up() {
    stop_while_running(Stop::Drop).await;
}

#[tokio::test]
async fn galaxy_installs_roles_into_roles_path_before_the_playbook() {
    let sshd = sshd!();
    let work = tempfile::tempdir().unwrap();
    let role = work.path().join("src/greet");
    std::fs::create_dir_all(role.join("tasks")).unwrap();
    std::fs::create_dir_all(role.join("meta")).unwrap();
    write(
        &role.join("tasks"),
        "main.yml",
        "- ansible.builtin.debug:\n    msg: hello from the greet role\n",
    );
    write(
        &role.join("meta"),
        "main.yml",
        "galaxy_info:\n  author: kiln\n  description: test\n  license: MIT\n  min_ansible_version: \"2.9\"\n  platforms: []\ndependencies: []\n",
    );
    let tarball = work.path().join("greet.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(work.path().join("src"))
        .arg("greet")
        .status()
        .unwrap();
    assert!(status.success());
    let requirements = write(
        work.path(),
        "requirements.yml",
        &format!("- src: file://{}\n  name: greet\n", tarball.display()),
    );
    let playbook = write(
        work.path(),
        "roles.yml",
        "- hosts: all\n  gather_facts: false\n  roles:\n    - greet\n",
    );
    let roles = work.path().join("roles");

    let conn = conn(&sshd, Key::File, sshd.host_public_key());
    let (result, lines) = run(
        json!({
            "playbook_file": playbook,
            "galaxy_file": requirements,
            "roles_path": roles,
        }),
        &conn,
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e}\noutput:\n{}", lines.join("\n")));
    assert!(roles.join("greet/tasks/main.yml").is_file());
    let installed = lines
        .iter()
        .position(|l| l.contains("greet was installed successfully"));
    let greeted = lines
        .iter()
        .position(|l| l.contains("hello from the greet role"));
    assert!(
        matches!((installed, greeted), (Some(i), Some(g)) if i < g),
        "{lines:?}"
    );
}

const WHOAMI_PLAYBOOK: &str = r#"
- hosts: all
  gather_facts: false
  tasks:
    - command: id -un
      register: who
    - debug:
        msg: "logged in as {{ who.stdout }}"
"#;

/// `user` overrides the builder's user: Ansible logs in as it (the harness's sshd accepts the
/// build's key for every user).
#[tokio::test]
async fn user_overrides_the_builders_user() {
    let sshd = sshd!();
    const USER: &str = "kiln-ssh-test";
    if !kiln_testkit::ensure_password_user(USER, "kiln ansible test") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let playbook = write(work.path(), "whoami.yml", WHOAMI_PLAYBOOK);
    let inventory_dir = tempfile::tempdir().unwrap();
    let conn = conn(&sshd, Key::File, sshd.host_public_key());
    assert_eq!(conn.user.as_deref(), Some("root"), "the builder's user");
    let (result, lines) = run(
        json!({
            "playbook_file": playbook,
            "user": USER,
            "host_alias": "machine-two",
            "inventory_directory": inventory_dir.path(),
            "keep_inventory_file": true,
        }),
        &conn,
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e}\noutput:\n{}\nsshd:\n{}", lines.join("\n"), sshd.log()));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("logged in as {USER}"))),
        "{lines:?}"
    );
    let kept = kept_inventory(inventory_dir.path(), "machine-two");
    assert_eq!(
        kept.inventory["all"]["hosts"]["machine-two"]["ansible_user"],
        USER
    );
}
