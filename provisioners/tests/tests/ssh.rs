//! The `shell`, `file` and `breakpoint` provisioners run through real templates, planned and run
//! by the runner with the `null` builder's SSH communicator against a throwaway OpenSSH server.
//!
//! The server runs on this machine, so a "remote" path is also a local one: tests check the
//! provisioners' work by reading files directly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_core::component::Registry;
use kiln_core::event::{Event, EventKind, EventSink, OutputStream, Redactor};
use kiln_core::runner::{run_plan, RunOptions, RunSummary};
use kiln_core::template::{self, LoadOptions};
use kiln_testkit::{ensure_password_user, Sshd, SshdOptions};
use tokio::sync::mpsc::UnboundedReceiver;

fn registry() -> Registry {
    let mut registry = Registry::default();
    null::register(&mut registry);
    shell::register(&mut registry);
    file::register(&mut registry);
    breakpoint::register(&mut registry);
    ansible::register(&mut registry);
    registry
}

/// A `null` source named `name` that logs in to `sshd` as root with a pinned host key.
fn source(sshd: &Sshd, name: &str, fingerprint: &str) -> String {
    format!(
        r#"
source "null" "{name}" {{
  communicator             = "ssh"
  ssh_host                 = "127.0.0.1"
  ssh_port                 = {port}
  ssh_username             = "root"
  ssh_private_key_file     = "{key}"
  ssh_host_key_fingerprint = "{fingerprint}"
  ssh_timeout              = "30s"
}}
"#,
        port = sshd.port(),
        key = sshd.client_key().display(),
    )
}

/// A test host: its sshd and a work directory (the same on both sides).
struct Host {
    sshd: Sshd,
    work: tempfile::TempDir,
}

impl Host {
    fn start() -> Option<Host> {
        Some(Host {
            sshd: Sshd::start()?,
            work: tempfile::tempdir().unwrap(),
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    /// `{{W}}` in `body` stands for the work directory.
    fn template(&self, body: &str) -> PathBuf {
        let fingerprint = self.sshd.host_key_fingerprint();
        self.template_with(&source(&self.sshd, "host", &fingerprint), "host", body)
    }

    fn template_with(&self, sources: &str, names: &str, body: &str) -> PathBuf {
        let dir = self.path("template");
        std::fs::create_dir_all(&dir).unwrap();
        let list = names
            .split(',')
            .map(|n| format!("\"source.null.{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let body = body.replace("{{W}}", &self.work.path().display().to_string());
        let text = format!("{sources}\nbuild {{\n  sources = [{list}]\n{body}\n}}\n");
        std::fs::write(dir.join("build.pkr.hcl"), text).unwrap();
        dir
    }
}

/// Plans the template in `dir`; panics with the diagnostics when it is invalid.
fn plan(dir: &Path) -> (template::Loaded, kiln_core::plan::BuildPlan, Registry) {
    let opts = LoadOptions {
        path: dir.to_path_buf(),
        var_args: Vec::new(),
        env: Vec::new(),
    };
    let registry = registry();
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry);
    let plan = plan.unwrap_or_else(|| panic!("the template is invalid:\n{diags}"));
    assert!(!diags.has_errors(), "{diags}");
    (loaded, plan, registry)
}

fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event.kind);
    }
    out
}

async fn run(dir: &Path) -> (RunSummary, Vec<EventKind>) {
    let (_loaded, plan, registry) = plan(dir);
    let (sink, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let summary = run_plan(&plan, &registry, RunOptions::default(), sink).await;
    (summary, drain(&mut rx))
}

/// The standard output lines of `shell` (stderr also carries whatever root's login profile
/// says on this machine).
fn outputs(events: &[EventKind]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::Output {
                source,
                stream,
                line,
            } => {
                assert_eq!(source, "shell");
                (*stream == OutputStream::Stdout).then(|| line.clone())
            }
            _ => None,
        })
        .collect()
}

fn messages(events: &[EventKind]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn error(summary: &RunSummary) -> String {
    assert!(!summary.ok(), "the build should have failed");
    summary.builds[0].error.join(": ")
}

fn assert_ok(summary: &RunSummary, events: &[EventKind]) {
    assert!(summary.ok(), "{:?}\n{events:#?}", summary.builds[0].error);
}

#[tokio::test]
async fn inline_and_script_commands_run_and_are_removed() {
    let Some(host) = Host::start() else { return };
    std::fs::write(
        host.path("step.sh"),
        "#!/bin/sh\r\necho \"script ran as $(id -un) for $PACKER_BUILDER_TYPE\"\r\n",
    )
    .unwrap();
    std::fs::create_dir(host.path("scripts")).unwrap();
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline        = ["echo hello from inline", "echo \"inline ran as $0\"", "touch {{W}}/inline-done"]
    remote_folder = "{{W}}/scripts"
  }
  provisioner "shell" {
    script      = "{{W}}/step.sh"
    remote_path = "{{W}}/scripts/kept.sh"
    skip_clean  = true
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let lines = outputs(&events);
    assert!(
        lines.contains(&"hello from inline".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"script ran as root for null".to_string()),
        "{lines:?}"
    );
    assert!(host.path("inline-done").exists());
    // The inline script was uploaded to `remote_folder` (and run from there).
    let ran_as = format!("inline ran as {}/", host.path("scripts").display());
    let script = lines
        .iter()
        .find_map(|line| line.strip_prefix(&ran_as))
        .unwrap_or_else(|| panic!("no `{ran_as}...` in {lines:?}"));
    assert!(
        script.starts_with("script_") && script.ends_with(".sh"),
        "{script}"
    );
    let left: Vec<_> = std::fs::read_dir(host.path("scripts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        ["kept.sh"],
        "the inline script is removed, `skip_clean` keeps the other"
    );
    assert!(events.iter().any(
        |e| matches!(e, EventKind::Waiting { what, timeout_ms: Some(30_000) }
        if what == &format!("waiting for SSH on 127.0.0.1:{}", host.sshd.port()))
    ));
}

/// `scripts` run in the order given; `binary = true` uploads a script unchanged (its CRLF stays),
/// and `remote_folder` + `remote_file` name where it goes (kept with `skip_clean`).
#[tokio::test]
async fn scripts_run_in_order_and_binary_keeps_line_endings() {
    let Some(host) = Host::start() else { return };
    for (name, text) in [
        ("one.sh", "#!/bin/sh\necho one >> {{W}}/order\n"),
        ("two.sh", "#!/bin/sh\necho two >> {{W}}/order\n"),
        ("crlf.sh", "#!/bin/sh\nexit 0\r\n"),
    ] {
        let text = text.replace("{{W}}", &host.work.path().display().to_string());
        std::fs::write(host.path(name), text).unwrap();
    }
    std::fs::create_dir(host.path("remote")).unwrap();
    let dir = host.template(
        r#"
  provisioner "shell" {
    scripts = ["{{W}}/two.sh", "{{W}}/one.sh"]
  }
  provisioner "shell" {
    script        = "{{W}}/crlf.sh"
    binary        = true
    remote_folder = "{{W}}/remote"
    remote_file   = "as-is.sh"
    skip_clean    = true
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(
        std::fs::read_to_string(host.path("order")).unwrap(),
        "two\none\n"
    );
    let uploaded = std::fs::read(host.path("remote/as-is.sh")).unwrap();
    assert!(
        uploaded.ends_with(b"exit 0\r\n"),
        "binary keeps CRLF: {:?}",
        String::from_utf8_lossy(&uploaded)
    );
}

#[tokio::test]
async fn environment_vars_and_env_reach_the_script() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    environment_vars = ["A=one two", "B=it's", "C=x=y"]
    env              = { B = "env wins" }
    inline           = ["echo \"$A|$B|$C|$PACKER_BUILD_NAME\""]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(outputs(&events), ["one two|env wins|x=y|host"]);
}

#[tokio::test]
async fn a_failing_command_names_the_provisioner_command_and_exit_code() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline           = ["exit 3"]
    valid_exit_codes = [0, 3]
  }
  provisioner "shell" {
    inline      = ["echo failing; exit 4"]
    remote_path = "{{W}}/failing.sh"
  }
  provisioner "shell" {
    inline = ["touch {{W}}/never"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    let error = error(&summary);
    assert!(error.contains("provisioner 2 (shell) at "), "{error}");
    assert!(error.contains("build.pkr.hcl:"), "{error}");
    assert!(error.contains("inline commands (`chmod +x"), "{error}");
    assert!(error.contains("exited with code 4, expected 0"), "{error}");
    assert!(outputs(&events).contains(&"failing".to_string()));
    assert!(!host.path("never").exists());
    // The failed script is removed all the same: the machine may outlive the build.
    assert!(!host.path("failing.sh").exists());
}

#[tokio::test]
async fn a_wrong_pinned_host_key_is_refused() {
    let Some(host) = Host::start() else { return };
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let dir = host.template_with(
        &source(&host.sshd, "host", wrong),
        "host",
        r#"
  provisioner "shell" {
    inline = ["touch {{W}}/never"]
  }
"#,
    );
    let (summary, _) = run(&dir).await;
    let error = error(&summary);
    assert!(error.contains("cannot connect over SSH"), "{error}");
    assert!(
        error.contains(&format!(
            "is {}, expected {wrong}",
            host.sshd.host_key_fingerprint()
        )),
        "{error}"
    );
    assert!(!host.path("never").exists());
}

/// Runs the template in `dir` on a multi-threaded runtime while this thread, which owns the sshd
/// fixture, calls `on_line` for every output line (to stop or restart the server mid-build).
fn run_watching(
    dir: &Path,
    sshd: &mut Sshd,
    on_line: impl Fn(&str, &mut Sshd),
) -> (RunSummary, Vec<EventKind>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_loaded, plan, registry) = plan(dir);
    let (sink, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let task =
        runtime.spawn(async move { run_plan(&plan, &registry, RunOptions::default(), sink).await });
    let mut events = Vec::new();
    while let Some(event) = rx.blocking_recv() {
        if let EventKind::Output { line, .. } = &event.kind {
            on_line(line, sshd);
        }
        let done = matches!(event.kind, EventKind::RunFinished { .. });
        events.push(event.kind);
        if done {
            break;
        }
    }
    (runtime.block_on(task).unwrap(), events)
}

/// A provisioner that says "going down" and then waits to lose its connection.
const GOING_DOWN: &str = r#"
  provisioner "shell" {
    inline            = ["echo going down", "sleep 60"]
    expect_disconnect = true
    remote_path       = "{{W}}/going-down.sh"
  }
"#;

#[test]
fn expect_disconnect_survives_an_sshd_restart_then_shell_reconnects() {
    let Some(mut host) = Host::start() else {
        return;
    };
    let body = GOING_DOWN.to_string()
        + r#"
  provisioner "shell" {
    inline = ["echo back again"]
  }
"#;
    let dir = host.template(&body);
    let (summary, events) = run_watching(&dir, &mut host.sshd, |line, sshd| {
        if line == "going down" {
            sshd.restart();
        }
    });
    assert_ok(&summary, &events);
    // The killed shell may report its end on stderr before the connection drops.
    let lines = outputs(&events);
    assert_eq!(lines[0], "going down");
    assert!(lines.contains(&"back again".to_string()), "{lines:?}");
    assert!(messages(&events).iter().any(|m| m.contains("as expected")));
}

#[test]
fn expect_disconnect_survives_an_sshd_restart_then_file_reconnects() {
    let Some(mut host) = Host::start() else {
        return;
    };
    let body = GOING_DOWN.to_string()
        + r#"
  provisioner "file" {
    content     = "after the restart"
    destination = "{{W}}/after"
  }
  provisioner "shell" {
    inline = ["cat {{W}}/after"]
  }
"#;
    let dir = host.template(&body);
    let (summary, events) = run_watching(&dir, &mut host.sshd, |line, sshd| {
        if line == "going down" {
            sshd.restart();
        }
    });
    assert_ok(&summary, &events);
    let lines = outputs(&events);
    assert_eq!(lines[0], "going down");
    assert!(
        lines.contains(&"after the restart".to_string()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn start_retry_timeout_bounds_waiting_for_a_machine_that_stays_down() {
    let Some(host) = Host::start() else { return };
    // The script kills the listening sshd (from its pid file), then its own session.
    let pid_file = host.sshd.client_key().with_file_name("sshd.pid");
    let body = format!(
        r#"
  provisioner "shell" {{
    inline            = ["kill -9 $(cat {})", "kill -9 $PPID", "sleep 60"]
    expect_disconnect = true
    remote_path       = "{{{{W}}}}/kill-sshd.sh"
  }}
  provisioner "shell" {{
    start_retry_timeout = "2s"
    inline              = ["touch {{{{W}}}}/never"]
  }}
"#,
        pid_file.display()
    );
    let dir = host.template(&body);
    let start = Instant::now();
    let (summary, _) = run(&dir).await;
    let error = error(&summary);
    assert!(error.contains("provisioner 2 (shell)"), "{error}");
    assert!(
        error.contains("still unreachable after `start_retry_timeout` (2s)"),
        "{error}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "ssh_timeout is 30s"
    );
    assert!(!host.path("never").exists());
}

#[tokio::test]
async fn execute_command_and_inline_shebang_are_used() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    environment_vars = ["A=x y"]
    execute_command  = "echo custom {{.Vars}}; /bin/sh {{.Path}}"
    inline           = ["echo \"$A\""]
  }
  provisioner "shell" {
    inline_shebang = "/bin/bash"
    inline         = ["echo $${BASH_VERSION:+bash}"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(
        outputs(&events),
        [
            "custom PACKER_BUILD_NAME=host PACKER_BUILDER_TYPE=null A=x y",
            "",
            "bash"
        ]
    );
}

#[tokio::test]
async fn first_use_host_key_and_build_variables() {
    let Some(host) = Host::start() else { return };
    let sources = format!(
        r#"
source "null" "host" {{
  communicator         = "ssh"
  ssh_host             = "127.0.0.1"
  ssh_port             = {}
  ssh_username         = "root"
  ssh_private_key_file = "{}"
}}
"#,
        host.sshd.port(),
        host.sshd.client_key().display()
    );
    let dir = host.template_with(
        &sources,
        "host",
        r#"
  provisioner "shell" {
    inline = [
      "echo '${build.ConnType} ${build.Host}:${build.Port} ${build.User}'",
      "echo '${build.SSHPrivateKey}' | grep -c PRIVATE",
    ]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let port = host.sshd.port();
    let lines = outputs(&events);
    assert_eq!(lines[0], format!("ssh 127.0.0.1:{port} root"));
    assert_eq!(
        lines[1], "2",
        "the key (BEGIN and END lines) reached the script"
    );
    let key = std::fs::read_to_string(host.sshd.client_key()).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(
        !format!("{events:?}").contains(key_line),
        "the private key leaked into an event"
    );
    let fingerprint = host.sshd.host_key_fingerprint();
    assert!(
        messages(&events)
            .iter()
            .any(|m| m.contains("on first use") && m.contains(&fingerprint)),
        "{:?}",
        messages(&events)
    );
}

/// Through a jump host (`ssh_bastion_*`) that takes another user by password: the build's
/// commands run on the machine behind it, and the jump host's key, trusted on first use, is
/// reported with the option that pins it.
#[tokio::test]
async fn a_build_goes_through_a_bastion_with_its_own_user() {
    let Some(host) = Host::start() else { return };
    let Some(bastion) = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    }) else {
        return;
    };
    let (user, password) = ("kiln-ssh-test", "correct horse");
    if !ensure_password_user(user, password) {
        return;
    }
    let fingerprint = host.sshd.host_key_fingerprint();
    let direct = source(&host.sshd, "host", &fingerprint);
    let sources = format!(
        r#"{}  ssh_bastion_host     = "127.0.0.1"
  ssh_bastion_port     = {}
  ssh_bastion_username = "{user}"
  ssh_bastion_password = "{password}"
}}
"#,
        direct.strip_suffix("}\n").unwrap(),
        bastion.port()
    );
    let dir = host.template_with(
        &sources,
        "host",
        r#"
  provisioner "shell" {
    inline = ["echo \"through as $(id -un)\"", "touch {{W}}/through"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(outputs(&events), ["through as root"]);
    assert!(host.path("through").exists());
    let log = bastion.log();
    assert!(
        log.contains(&format!("Accepted password for {user} from 127.0.0.1")),
        "{log}"
    );
    assert!(
        host.sshd.log().contains("Accepted publickey for root"),
        "{}",
        host.sshd.log()
    );
    let expected = format!(
        "trusting the host key of 127.0.0.1:{} on first use: {} \
         (pin it with `ssh_bastion_host_key_fingerprint`)",
        bastion.port(),
        bastion.host_key_fingerprint()
    );
    let messages = messages(&events);
    assert!(messages.contains(&expected), "{messages:?}");
    // The machine's key is pinned: no first-use message for it.
    let machine = format!("127.0.0.1:{} on first use", host.sshd.port());
    assert!(
        !messages.iter().any(|m| m.contains(&machine)),
        "{messages:?}"
    );
    assert!(
        !format!("{events:?}").contains(password),
        "the bastion password leaked into an event"
    );
}

#[tokio::test]
async fn an_unexpected_disconnect_fails() {
    let Some(host) = Host::start() else { return };
    // Kills the sshd session process that runs the script, dropping the connection.
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline      = ["kill -9 $PPID; sleep 5"]
    remote_path = "{{W}}/kill-session.sh"
  }
"#,
    );
    let (summary, _) = run(&dir).await;
    let error = error(&summary);
    assert!(error.contains("the connection was lost"), "{error}");
    assert!(error.contains("expect_disconnect"), "{error}");
}

/// Writes 1,000 small files of different contents under `root`, in nested directories.
fn make_tree(root: &Path) {
    for i in 0..1000 {
        let dir = root
            .join(format!("d{}", i % 10))
            .join(format!("e{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..(i % 300)).map(|j| (i * 31 + j) as u8).collect();
        std::fs::write(dir.join(format!("f{i}.bin")), content).unwrap();
    }
}

/// Every file under `root`, by relative path, with its bytes.
fn read_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_tree_of_1000_files_goes_up_and_comes_back_byte_for_byte() {
    let Some(host) = Host::start() else { return };
    make_tree(&host.path("tree"));
    let dir = host.template(
        r#"
  provisioner "file" {
    source      = "{{W}}/tree/"
    destination = "{{W}}/remote/contents"
  }
  provisioner "file" {
    source      = "{{W}}/tree"
    destination = "{{W}}/remote/itself"
  }
  provisioner "file" {
    direction   = "download"
    source      = "{{W}}/remote/contents/"
    destination = "{{W}}/back"
  }
  provisioner "file" {
    direction   = "download"
    source      = "{{W}}/remote/contents/d0/e3/f10.bin"
    destination = "{{W}}/single/"
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let original = read_tree(&host.path("tree"));
    assert_eq!(original.len(), 1000);
    assert!(
        read_tree(&host.path("remote/contents")) == original,
        "`dir/` uploads the contents"
    );
    assert!(
        read_tree(&host.path("remote/itself/tree")) == original,
        "`dir` uploads the directory"
    );
    assert!(
        read_tree(&host.path("back")) == original,
        "the download differs"
    );
    assert_eq!(
        std::fs::read(host.path("single/f10.bin")).unwrap(),
        std::fs::read(host.path("tree/d0/e3/f10.bin")).unwrap()
    );
}

#[tokio::test]
async fn content_and_single_files_are_uploaded() {
    let Some(host) = Host::start() else { return };
    std::fs::write(host.path("one.txt"), "one\n").unwrap();
    std::fs::write(host.path("two.txt"), "two\n").unwrap();
    std::fs::create_dir_all(host.path("remote/many")).unwrap();
    let dir = host.template(
        r#"
  provisioner "file" {
    content     = "hello ${source.name}\n"
    destination = "{{W}}/remote/content.txt"
  }
  provisioner "file" {
    source      = "{{W}}/one.txt"
    destination = "{{W}}/remote/"
  }
  provisioner "file" {
    sources     = ["{{W}}/one.txt", "{{W}}/two.txt"]
    destination = "{{W}}/remote/many"
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let read = |p: &str| std::fs::read_to_string(host.path(p)).unwrap();
    assert_eq!(read("remote/content.txt"), "hello host\n");
    assert_eq!(read("remote/one.txt"), "one\n");
    assert_eq!(read("remote/many/one.txt"), "one\n");
    assert_eq!(read("remote/many/two.txt"), "two\n");
}

#[test]
fn a_missing_upload_source_is_reported_when_planning() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "file" {
    source      = "{{W}}/missing.txt"
    destination = "{{W}}/remote/"
  }
"#,
    );
    let opts = LoadOptions {
        path: dir,
        var_args: Vec::new(),
        env: Vec::new(),
    };
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry());
    assert!(plan.is_none());
    let text = diags.to_string();
    assert!(text.contains("missing.txt` does not exist"), "{text}");
}

#[tokio::test]
async fn breakpoint_is_skipped_without_a_terminal() {
    let Some(host) = Host::start() else { return };
    // Whatever the test runner was given, stdin is no terminal from here on.
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup2 on descriptors this process owns; no other test reads stdin.
    assert!(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } == 0);
    let dir = host.template(
        r#"
  provisioner "breakpoint" {
    note = "look around"
  }
  provisioner "breakpoint" {
    disable = true
  }
  provisioner "shell" {
    inline = ["echo after the breakpoint"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let messages = messages(&events);
    assert!(
        messages
            .contains(&"skipping breakpoint: look around (stdin is not a terminal)".to_string()),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"breakpoint disabled".to_string()),
        "{messages:?}"
    );
    assert_eq!(outputs(&events), ["after the breakpoint"]);
}

// ---------------------------------------------------------------------------------------------
// Meta-arguments, handled by the runner, with these provisioners
// ---------------------------------------------------------------------------------------------

/// Two sources, `a` and `b`, on the same host.
fn two_sources(host: &Host, body: &str) -> PathBuf {
    let fingerprint = host.sshd.host_key_fingerprint();
    let sources = source(&host.sshd, "a", &fingerprint) + &source(&host.sshd, "b", &fingerprint);
    host.template_with(&sources, "a,b", body)
}

#[tokio::test]
async fn only_limits_a_provisioner_to_named_sources() {
    let Some(host) = Host::start() else { return };
    let dir = two_sources(
        &host,
        r#"
  provisioner "file" {
    only        = ["null.a"]
    content     = "x"
    destination = "{{W}}/only-${source.name}"
  }
  provisioner "shell" {
    only   = ["null.b"]
    inline = ["touch {{W}}/shell-only-${source.name}"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert!(host.path("only-a").exists());
    assert!(!host.path("only-b").exists());
    assert!(!host.path("shell-only-a").exists());
    assert!(host.path("shell-only-b").exists());
}

#[tokio::test]
async fn except_skips_a_provisioner_for_named_sources() {
    let Some(host) = Host::start() else { return };
    let dir = two_sources(
        &host,
        r#"
  provisioner "shell" {
    except = ["null.a"]
    inline = ["touch {{W}}/except-${source.name}"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert!(!host.path("except-a").exists());
    assert!(host.path("except-b").exists());
}

#[tokio::test]
async fn override_changes_options_per_source() {
    let Some(host) = Host::start() else { return };
    let dir = two_sources(
        &host,
        r#"
  provisioner "shell" {
    inline = ["echo default > {{W}}/override-${source.name}"]
    override = {
      "null.b" = {
        inline = ["echo overridden > {{W}}/override-${source.name}"]
      }
    }
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    let read = |p: &str| std::fs::read_to_string(host.path(p)).unwrap();
    assert_eq!(read("override-a"), "default\n");
    assert_eq!(read("override-b"), "overridden\n");
}

#[tokio::test]
async fn pause_before_waits_before_the_provisioner() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    pause_before = "1s"
    inline       = ["echo paused"]
  }
"#,
    );
    let start = Instant::now();
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(messages(&events)
        .iter()
        .any(|m| m.starts_with("pausing 1s before provisioner 1 (shell)")));
    assert_eq!(outputs(&events), ["paused"]);
}

#[tokio::test]
async fn max_retries_runs_a_failing_provisioner_again() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    max_retries = 2
    inline      = ["echo try >> {{W}}/tries", "test $(wc -l < {{W}}/tries) -ge 2"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(
        std::fs::read_to_string(host.path("tries")).unwrap(),
        "try\ntry\n"
    );
    assert!(messages(&events)
        .iter()
        .any(|m| m.contains("(attempt 1 of 3)")));
}

#[tokio::test]
async fn timeout_stops_a_provisioner_that_runs_too_long() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    timeout     = "1s"
    inline      = ["sleep 30"]
    remote_path = "{{W}}/sleep.sh"
  }
"#,
    );
    let start = Instant::now();
    let (summary, _) = run(&dir).await;
    let error = error(&summary);
    assert!(error.contains("did not finish within 1s"), "{error}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// `except`, `override` (of the destination) and `pause_before` with `file`.
#[tokio::test]
async fn meta_arguments_work_with_file() {
    let Some(host) = Host::start() else { return };
    let dir = two_sources(
        &host,
        r#"
  provisioner "file" {
    except      = ["null.a"]
    content     = "x"
    destination = "{{W}}/except-${source.name}"
  }
  provisioner "file" {
    pause_before = "300ms"
    content      = "for ${source.name}\n"
    destination  = "{{W}}/default-${source.name}"
    override = {
      "null.b" = {
        destination = "{{W}}/overridden-${source.name}"
      }
    }
  }
"#,
    );
    let start = Instant::now();
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(!host.path("except-a").exists());
    assert!(host.path("except-b").exists());
    let read = |p: &str| std::fs::read_to_string(host.path(p)).unwrap();
    assert_eq!(read("default-a"), "for a\n");
    assert_eq!(read("overridden-b"), "for b\n");
    assert!(!host.path("default-b").exists());
    let pauses = messages(&events)
        .iter()
        .filter(|m| m.starts_with("pausing 300ms before provisioner 2 (file)"))
        .count();
    assert_eq!(pauses, 2, "{:?}", messages(&events));
}

/// Makes a FIFO at `path`: a download of it blocks until something writes to it.
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// Opens the FIFO `path` for writing as soon as something reads it (within `limit`); `None` when
/// nothing did. Closing the writer ends the reader's read.
fn writer_once_read(path: &Path, limit: Duration) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + limit;
    loop {
        // Without a reader, a non-blocking open for writing fails (ENXIO).
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        match opened {
            Ok(file) => return Some(file),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

/// `timeout` with `file`: a download from a FIFO that nothing writes to never ends, and is
/// stopped.
#[tokio::test]
async fn timeout_stops_a_file_download_that_never_ends() {
    let Some(host) = Host::start() else { return };
    mkfifo(&host.path("never-written"));
    let dir = host.template(
        r#"
  provisioner "file" {
    direction   = "download"
    source      = "{{W}}/never-written"
    destination = "{{W}}/never"
    timeout     = "1s"
  }
  provisioner "shell" {
    inline = ["touch {{W}}/not-reached"]
  }
"#,
    );
    let start = Instant::now();
    let (summary, _) = run(&dir).await;
    // The `cat` on the machine still waits for a writer: let it end.
    drop(writer_once_read(
        &host.path("never-written"),
        Duration::from_secs(5),
    ));
    let error = error(&summary);
    assert!(error.contains("provisioner 1 (file)"), "{error}");
    assert!(error.contains("did not finish within 1s"), "{error}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(!host.path("not-reached").exists());
}

/// `max_retries` with `file`: the first attempt of a download stalls (a FIFO held open by a
/// writer that sends nothing) until its `timeout`; meanwhile the FIFO is replaced by a file, which
/// the second attempt fetches.
#[tokio::test]
async fn max_retries_runs_a_stalled_file_download_again() {
    let Some(host) = Host::start() else { return };
    let source = host.path("source");
    mkfifo(&source);
    std::fs::write(host.path("replacement"), "second attempt\n").unwrap();
    let dir = host.template(
        r#"
  provisioner "file" {
    direction   = "download"
    source      = "{{W}}/source"
    destination = "{{W}}/fetched"
    timeout     = "1s"
    max_retries = 1
  }
"#,
    );
    let stall = std::thread::spawn({
        let (source, replacement) = (source.clone(), host.path("replacement"));
        move || {
            let writer = writer_once_read(&source, Duration::from_secs(20));
            std::fs::rename(replacement, source).unwrap();
            writer
        }
    });
    let (summary, events) = run(&dir).await;
    let writer = stall.join().unwrap();
    assert!(writer.is_some(), "the first attempt never read the FIFO");
    // Lets the first attempt's `cat` on the machine end.
    drop(writer);
    assert_ok(&summary, &events);
    assert_eq!(
        std::fs::read_to_string(host.path("fetched")).unwrap(),
        "second attempt\n"
    );
    let retried = messages(&events)
        .into_iter()
        .filter(|m| m.contains("(attempt 1 of 2)"))
        .collect::<Vec<_>>();
    assert_eq!(retried.len(), 1, "{:?}", messages(&events));
    assert!(
        retried[0].contains("did not finish within 1s"),
        "{retried:?}"
    );
}

#[tokio::test]
async fn pause_after_waits_after_the_scripts() {
    let Some(host) = Host::start() else { return };
    let dir = host.template(
        r#"
  provisioner "shell" {
    pause_after = "1s"
    inline      = ["echo before the pause"]
  }
"#,
    );
    let start = Instant::now();
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(messages(&events).contains(&"pausing 1s after the shell scripts".to_string()));
}

#[tokio::test]
async fn a_generated_source_is_checked_only_when_copied() {
    let Some(host) = Host::start() else { return };
    std::fs::create_dir(host.path("remote")).unwrap();
    // The machine is this one, so a `shell` provisioner can make the local source.
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline = ["echo made during the build > {{W}}/generated.txt"]
  }
  provisioner "file" {
    source      = "{{W}}/generated.txt"
    destination = "{{W}}/remote/"
    generated   = true
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(
        std::fs::read_to_string(host.path("remote/generated.txt")).unwrap(),
        "made during the build\n"
    );
}

/// How many established TCP connections go to `port` on loopback (IPv4), from `/proc/net/tcp`.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[2] == remote && fields[3] == "01"
        })
        .count()
}

#[test]
fn the_ssh_connection_is_closed_after_the_build() {
    let Some(mut host) = Host::start() else {
        return;
    };
    let port = host.sshd.port();
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline = ["echo provisioning"]
  }
"#,
    );
    let during = std::cell::Cell::new(0);
    let (summary, events) = run_watching(&dir, &mut host.sshd, |line, _| {
        if line == "provisioning" {
            during.set(connections_to(port));
        }
    });
    assert_ok(&summary, &events);
    assert_eq!(during.get(), 1, "one session while provisioning");
    assert!(events.iter().any(
        |e| matches!(e, EventKind::CleanupFinished { step, ok: true, .. } if step == "connect")
    ));
    // The session's task ends right after the communicator is dropped; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections_to(port) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(connections_to(port), 0, "the connection outlived the build");
}

/// The `ansible` provisioner, driven by a template through the `null` builder: it reaches the
/// machine directly over SSH with the builder's key and the host key the builder verified.
#[tokio::test]
async fn ansible_playbook_runs_through_the_null_builder() {
    let Some(host) = Host::start() else { return };
    if !have_ansible() {
        return;
    }
    let user = "kiln-e2e-ansible";
    std::fs::write(
        host.path("site.yml"),
        format!(
            r#"- hosts: all
  gather_facts: false
  tasks:
    - name: a user
      ansible.builtin.user:
        name: {user}
    - name: a file
      ansible.builtin.copy:
        dest: "{w}/from-ansible"
        content: "made by {{{{ packer_build_name }}}}\n"
    - name: a variable from ansible_env_vars
      ansible.builtin.copy:
        dest: "{w}/from-env"
        content: "{{{{ lookup('env', 'KILN_FROM_ENV') }}}}\n"
"#,
            w = host.work.path().display()
        ),
    )
    .unwrap();
    let dir = host.template(
        r#"
  provisioner "ansible" {
    playbook_file    = "{{W}}/site.yml"
    ansible_env_vars = ["KILN_FROM_ENV=hello from=the environment"]
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    let created = std::process::Command::new("id").arg(user).output().unwrap();
    let _ = std::process::Command::new("userdel")
        .arg("-r")
        .arg(user)
        .output();
    assert_ok(&summary, &events);
    assert!(
        created.status.success(),
        "the playbook did not create {user}"
    );
    assert_eq!(
        std::fs::read_to_string(host.path("from-ansible")).unwrap(),
        "made by host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.path("from-env")).unwrap(),
        "hello from=the environment\n",
        "`ansible_env_vars` reached ansible-playbook"
    );
}

/// Every provisioner of a build, and every transfer, goes over the build's one SSH connection:
/// sshd accepts a single login.
#[tokio::test]
async fn a_build_logs_in_once() {
    let Some(host) = Host::start() else { return };
    std::fs::write(host.path("step.sh"), "#!/bin/sh\necho from a script\n").unwrap();
    std::fs::create_dir(host.path("tree")).unwrap();
    std::fs::write(host.path("tree/leaf"), "leaf\n").unwrap();
    let dir = host.template(
        r#"
  provisioner "shell" {
    inline = ["echo one", "echo two"]
  }
  provisioner "file" {
    content     = "up\n"
    destination = "{{W}}/up"
  }
  provisioner "file" {
    source      = "{{W}}/tree/"
    destination = "{{W}}/tree-copy"
  }
  provisioner "file" {
    source      = "{{W}}/up"
    destination = "{{W}}/down"
    direction   = "download"
  }
  provisioner "shell" {
    script = "{{W}}/step.sh"
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert_ok(&summary, &events);
    assert_eq!(outputs(&events), ["one", "two", "from a script"]);
    assert_eq!(std::fs::read_to_string(host.path("down")).unwrap(), "up\n");
    assert_eq!(
        std::fs::read_to_string(host.path("tree-copy/leaf")).unwrap(),
        "leaf\n"
    );
    let log = host.sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
}

/// Whether `ansible-playbook` runs here; panics under `CI`, which must not skip.
fn have_ansible() -> bool {
    let found = std::process::Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "ansible-playbook is missing"
        );
        eprintln!("note: skipping: ansible-playbook is missing");
    }
    found
}

/// The ssh connection masters (`[mux]`) left for the port `port`.
fn ssh_masters_for(port: u16) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", r"ssh: .*\[mux\]"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{port}")) || l.contains(&format!("-{port}")))
        .map(str::to_owned)
        .collect()
}

/// Every meta-argument with `ansible`: `pause_before`, `max_retries` and `override` on both
/// sources, `except` and `only`, and a `timeout` that stops a playbook (and its ssh) midway.
#[tokio::test]
async fn meta_arguments_work_with_ansible() {
    let Some(host) = Host::start() else { return };
    if !have_ansible() {
        return;
    }
    let w = host.work.path().display().to_string();
    let playbook = |name: &str, tasks: &str| {
        let text = format!("- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}");
        std::fs::write(host.path(name), text).unwrap();
    };
    // Fails on its first run on each source, then records `who`.
    playbook(
        "retry.yml",
        &format!(
            r#"    - ansible.builtin.shell: |
        f={w}/count-{{{{ packer_build_name }}}}
        n=$(cat $f 2>/dev/null || echo 0); n=$((n + 1)); echo $n > $f; test $n -ge 2
    - ansible.builtin.copy:
        dest: "{w}/who-{{{{ packer_build_name }}}}"
        content: "{{{{ who }}}}\n"
"#
        ),
    );
    playbook(
        "mark.yml",
        &format!(
            "    - ansible.builtin.file:\n        path: \"{w}/except-{{{{ packer_build_name }}}}\"\n        state: touch\n"
        ),
    );
    playbook(
        "slow.yml",
        &format!("    - ansible.builtin.shell: touch {w}/slow-started; sleep 60\n"),
    );
    let dir = two_sources(
        &host,
        r#"
  provisioner "ansible" {
    playbook_file   = "{{W}}/retry.yml"
    pause_before    = "200ms"
    max_retries     = 1
    extra_arguments = ["-e", "who=default"]
    override = {
      "null.b" = {
        extra_arguments = ["-e", "who=overridden"]
      }
    }
  }
  provisioner "ansible" {
    except        = ["null.b"]
    playbook_file = "{{W}}/mark.yml"
  }
  provisioner "ansible" {
    only          = ["null.b"]
    timeout       = "8s"
    playbook_file = "{{W}}/slow.yml"
  }
"#,
    );
    let started = Instant::now();
    let (summary, events) = run(&dir).await;
    let read = |p: &str| std::fs::read_to_string(host.path(p)).unwrap();
    for name in ["a", "b"] {
        assert_eq!(read(&format!("count-{name}")), "2\n", "attempts on {name}");
    }
    assert_eq!(read("who-a"), "default\n");
    assert_eq!(read("who-b"), "overridden\n");
    assert!(host.path("except-a").exists());
    assert!(!host.path("except-b").exists());
    assert!(host.path("slow-started").exists(), "{events:#?}");
    let by_name = |name: &str| {
        summary
            .builds
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no build {name}"))
    };
    assert!(by_name("null.a").ok, "{:?}", by_name("null.a"));
    let b_error = by_name("null.b").error.join(": ");
    assert!(b_error.contains("did not finish within 8s"), "{b_error}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the timeout did not stop the playbook"
    );
    let pauses = messages(&events)
        .iter()
        .filter(|m| m.starts_with("pausing 200ms before provisioner 1 (ansible)"))
        .count();
    assert_eq!(pauses, 2, "{:?}", messages(&events));
    assert!(
        ssh_masters_for(host.sshd.port()).is_empty(),
        "{:?}",
        ssh_masters_for(host.sshd.port())
    );
}

/// Meta-arguments with `breakpoint` (skipped here: no terminal): `only`, `except`, `override`
/// of its note, and `pause_before`.
#[tokio::test]
async fn meta_arguments_work_with_breakpoint() {
    let Some(host) = Host::start() else { return };
    let dir = two_sources(
        &host,
        r#"
  provisioner "breakpoint" {
    only = ["null.a"]
    note = "only-a"
  }
  provisioner "breakpoint" {
    except       = ["null.a"]
    pause_before = "100ms"
    note         = "default"
    override = {
      "null.b" = {
        note = "overridden-b"
      }
    }
  }
"#,
    );
    let (summary, events) = run(&dir).await;
    assert!(summary.ok(), "{:?}", summary.builds);
    let messages = messages(&events);
    let skipped = |note: &str| {
        messages
            .iter()
            .filter(|m| *m == &format!("skipping breakpoint: {note} (stdin is not a terminal)"))
            .count()
    };
    assert_eq!(skipped("only-a"), 1, "{messages:?}");
    assert_eq!(skipped("overridden-b"), 1, "{messages:?}");
    assert_eq!(skipped("default"), 0, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("pausing 100ms before provisioner 2 (breakpoint)")),
        "{messages:?}"
    );
}
