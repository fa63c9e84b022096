//! `kiln build` end to end (needs the template language, the runner and the components: pass
//! once merged): JSON events, parallel builds, the manifest, redaction, interrupts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{Kiln, Run};

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn find_files(dir: &Path, pred: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            find_files(&p, pred, out);
        } else if pred(&p) {
            out.push(p);
        }
    }
}

#[test]
fn hello_builds_in_parallel_with_json_events_and_a_manifest() {
    let k = Kiln::new();
    let hello = k.copy_from_repo("templates/hello");
    let r = k.run(&["build", "--json", hello.to_str().unwrap()]);
    r.expect_code(0);
    let events = r.events();
    assert!(events
        .iter()
        .all(|e| e["v"] == 1 && e["run_id"].is_string() && e["time"].is_string()));

    let started: Vec<&str> = of_type(&events, "build_started")
        .iter()
        .map(|e| e["build"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ne!(started[0], started[1]);
    // Parallel: both builds start before either finishes.
    let first_finish = events
        .iter()
        .position(|e| e["type"] == "build_finished")
        .unwrap();
    let second_start = events
        .iter()
        .rposition(|e| e["type"] == "build_started")
        .unwrap();
    assert!(
        second_start < first_finish,
        "builds ran one after the other"
    );
    for f in of_type(&events, "build_finished") {
        assert_eq!(f["ok"], true, "{f}");
    }
    // One artifact per build: the post-processors that hand it on do not announce it again.
    assert_eq!(
        of_type(&events, "artifact_produced").len(),
        2,
        "{:?}",
        of_type(&events, "artifact_produced")
    );
    let run = of_type(&events, "run_finished");
    assert_eq!(run.len(), 1);
    assert_eq!(run[0]["ok"], true);
    assert_eq!(run[0]["builds_ok"], 2);

    let mut manifests = Vec::new();
    find_files(
        k.dir.path(),
        &|p| p.file_name().is_some_and(|n| n == "manifest.json"),
        &mut manifests,
    );
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifests[0]).unwrap()).unwrap();
    assert!(manifest.to_string().contains("first"), "{manifest}");
    assert!(manifest.to_string().contains("second"), "{manifest}");
}

#[test]
fn human_output_prefixes_builds_and_summarises() {
    let k = Kiln::new();
    let hello = k.copy_from_repo("templates/hello");
    let r = k.run(&["build", "-color=false", hello.to_str().unwrap()]);
    r.expect_code(0);
    let out = r.stdout();
    assert!(out.contains("hello.null.first: "), "{out}");
    assert!(out.contains("hello.null.second: "), "{out}");
    assert!(
        out.contains("==> Builds finished. The artifacts of successful builds are:"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out:?}");
}

#[test]
fn parallel_builds_1_runs_one_at_a_time() {
    let k = Kiln::new();
    let hello = k.copy_from_repo("templates/hello");
    let r = k.run(&[
        "build",
        "-parallel-builds",
        "1",
        "-machine-readable",
        hello.to_str().unwrap(),
    ]);
    r.expect_code(0);
    let kinds: Vec<&str> = r
        .events()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t == "build_started" || *t == "build_finished")
        .map(|t| {
            if t == "build_started" {
                "start"
            } else {
                "finish"
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert_eq!(kinds, ["start", "finish", "start", "finish"]);
}

const FAILING: &str = r#"
source "null" "f" {
  communicator = "none"
}

build {
  sources = ["source.null.f"]

  provisioner "shell-local" {
    inline = ["echo about to fail", "exit 7"]
  }
}
"#;

#[test]
fn a_failed_build_exits_1_with_its_error() {
    let k = Kiln::new();
    k.write("f.pkr.hcl", FAILING);
    let r = k.run(&["build", "-color=false", "f.pkr.hcl"]);
    r.expect_code(1);
    let out = r.stdout();
    assert!(out.contains("    null.f: about to fail"), "{out}");
    assert!(
        out.contains("==> Some builds didn't complete successfully and had errors:\n--> null.f: "),
        "{out}"
    );
}

#[test]
fn on_error_ask_without_a_terminal_cleans_up() {
    let k = Kiln::new();
    k.write("f.pkr.hcl", FAILING);
    let r = Run(k
        .cmd(&["build", "-on-error=ask", "f.pkr.hcl"])
        .stdin(Stdio::null())
        .output()
        .unwrap());
    r.expect_code(1);
    assert!(
        r.stderr()
            .contains("needs a terminal on stdin; cleaning up"),
        "{}",
        r.stderr()
    );
}

const SECRET: &str = "hunter2-s3cr3t-value";

const SENSITIVE: &str = r#"
variable "secret" {
  type      = string
  sensitive = true
}

source "null" "s" {
  communicator = "none"
}

build {
  sources = ["source.null.s"]

  provisioner "shell-local" {
    inline = ["echo the secret is ${var.secret}", "echo and again: $SECRET"]
    environment_vars = ["SECRET=${var.secret}"]
  }
}
"#;

#[test]
fn sensitive_values_never_appear() {
    let k = Kiln::new();
    k.write("s.pkr.hcl", SENSITIVE);
    let var = format!("secret={SECRET}");
    for mode in ["--json", "-color=false", "-timestamp-ui"] {
        let r = k.run(&["build", mode, "-var", &var, "s.pkr.hcl"]);
        r.expect_code(0);
        let (out, err) = (r.stdout(), r.stderr());
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{mode}: leaked\n{out}\n{err}"
        );
        assert!(out.contains("the secret is <sensitive>"), "{mode}: {out}");
    }
    // The hello template's token too.
    let hello = k.copy_from_repo("templates/hello");
    let r = k.run(&["build", "--json", hello.to_str().unwrap()]);
    r.expect_code(0);
    assert!(
        !r.stdout().contains("not-a-real-token-42"),
        "{}",
        r.stdout()
    );
}

const SLEEPER: &str = r#"
variable "marker" {
  type = string
}

source "null" "c" {
  communicator = "none"
}

build {
  sources = ["source.null.c"]

  provisioner "shell-local" {
    inline = [
      "echo $$ > '${var.marker}.tmp' && mv '${var.marker}.tmp' '${var.marker}'",
      "exec sleep 1000",
    ]
  }
}
"#;

/// Whether `pid` is a live `sleep` (not gone, not a zombie).
fn sleep_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    cmd.starts_with("sleep") && !matches!(state, Some(Some('Z')) | None)
}

/// Waits until the shell that wrote `pid` has `exec`ed `sleep`.
fn wait_until_sleeping(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sleep_alive(pid) {
        assert!(Instant::now() < deadline, "{pid} never became `sleep`");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupt_cancels_cleans_up_and_exits_130() {
    let k = Kiln::new();
    k.write("c.pkr.hcl", SLEEPER);
    let marker = k.path("started");
    let var = format!("marker={}", marker.display());
    let mut child = k
        .cmd(&["build", "--json", "-var", &var, "c.pkr.hcl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kiln_pid = child.id() as i32;

    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            break text.trim().parse().expect("pid in marker");
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "kiln exited ({status}) before the provisioner started:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "the provisioner never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_until_sleeping(pid);

    // SAFETY: sending a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(kiln_pid, libc::SIGINT) }, 0);

    // `wait_with_output` reads both pipes to the end; kiln closes them when it exits.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => Run(out.unwrap()),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(kiln_pid, libc::SIGKILL) };
            panic!("kiln did not exit within 60 s of SIGINT");
        }
    };
    out.expect_code(130);
    // SIGKILL to the group is queued when kiln exits; the kernel ends the process just after.
    let gone_by = Instant::now() + Duration::from_secs(5);
    while sleep_alive(pid) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sleep_alive(pid), "sleep {pid} survived the interrupt");
    assert!(
        out.stderr().contains("interrupt received"),
        "{}",
        out.stderr()
    );
    let events = out.events();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "cleanup_started" || e["type"] == "cleanup_finished"),
        "no cleanup events: {}",
        out.stdout()
    );
    let finished = of_type(&events, "build_finished");
    assert_eq!(finished.len(), 1, "{}", out.stdout());
    assert_eq!(finished[0]["cancelled"], true);
}

const STUBBORN: &str = r#"
variable "marker" {
  type = string
}

source "null" "c" {
  communicator = "none"
}

build {
  sources = ["source.null.c"]

  provisioner "shell-local" {
    # Every process of the group ignores SIGTERM.
    execute_command = ["/bin/sh", "-c", "trap '' TERM; {{.Vars}} {{.Script}}"]
    inline = [
      "echo $$ > '${var.marker}.tmp' && mv '${var.marker}.tmp' '${var.marker}'",
      "exec sleep 1000",
    ]
  }
}
"#;

/// A second interrupt hurries the cleanup: a process that ignores SIGTERM is killed at once
/// instead of after the grace period (5 s in `shell-local`).
#[test]
fn second_interrupt_hurries() {
    use std::io::BufRead;

    let k = Kiln::new();
    k.write("c.pkr.hcl", STUBBORN);
    let marker = k.path("started");
    let var = format!("marker={}", marker.display());
    let mut child = k
        .cmd(&["build", "-color=false", "-var", &var, "c.pkr.hcl"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kiln_pid = child.id() as i32;
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            break text.trim().parse().expect("pid in marker");
        }
        assert!(child.try_wait().unwrap().is_none(), "kiln exited early");
        assert!(Instant::now() < deadline, "the provisioner never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let wait_for = |text: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `{text}` on stderr"));
        if line.contains(text) {
            break;
        }
    };

    wait_until_sleeping(pid);
    let first = Instant::now();
    // SAFETY: signalling the child we spawned.
    assert_eq!(unsafe { libc::kill(kiln_pid, libc::SIGINT) }, 0);
    wait_for("interrupt received");
    assert!(
        sleep_alive(pid),
        "sleep ignores SIGTERM and should still run"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(kiln_pid, libc::SIGINT) }, 0);
    wait_for("second interrupt");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!sleep_alive(pid), "sleep {pid} survived");
    let took = first.elapsed();
    assert!(took < Duration::from_secs(3), "hurrying took {took:?}");
}

/// Values reach components converted to their options' types at run time too: strings for
/// `valid_exit_codes` (a `list(number)`) accept the exit code.
#[test]
fn option_values_are_converted_when_the_build_runs() {
    let k = Kiln::new();
    k.write(
        "t.pkr.hcl",
        "source \"null\" \"a\" {\n  communicator = \"none\"\n}\n\n\
         build {\n  sources = [\"source.null.a\"]\n  provisioner \"shell-local\" {\n    \
         inline           = [\"exit 3\"]\n    valid_exit_codes = [\"0\", \"3\"]\n  }\n}\n",
    );
    k.run(&["build", "t.pkr.hcl"]).expect_code(0);
}

/// A provisioner that fails on its first run only.
const FAILS_ONCE: &str = r#"
variable "marker" {
  type = string
}

source "null" "r" {
  communicator = "none"
}

build {
  sources = ["source.null.r"]

  provisioner "shell-local" {
    inline = ["test -e '${var.marker}' || { touch '${var.marker}'; echo first run fails; exit 3; }"]
  }
}
"#;

/// `kiln` on a real terminal: a pty from util-linux `script`, whose input we write and whose
/// screen we read.
struct Terminal {
    child: std::process::Child,
    input: std::process::ChildStdin,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Everything shown so far.
    seen: String,
}

impl Terminal {
    /// Runs `kiln ARGS` in `k`'s directory; `args` is shell text, `$VAR`s taken from `env`.
    fn start(k: &Kiln, args: &str, env: &[(&str, &Path)]) -> Terminal {
        use std::io::Read;
        let mut command = Command::new("script");
        command
            .args(["-qefc", &format!("\"$KILN\" {args}"), "/dev/null"])
            .current_dir(k.dir.path())
            .env("KILN", env!("CARGO_BIN_EXE_kiln"))
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("util-linux `script`");
        let input = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child,
            input,
            chunks,
            seen: String::new(),
        }
    }

    /// Reads the screen until it shows `text`.
    fn read_until(&mut self, text: &str) {
        while !self.seen.contains(text) {
            let chunk = self
                .chunks
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no `{text}` on the terminal; it shows: {}", self.seen));
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Waits for kiln to exit and reads the rest of the screen.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "kiln did not finish: {}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(chunk) = self.chunks.recv_timeout(Duration::from_secs(1)) {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        status
    }
}

/// `-on-error=ask` on a real terminal: answering `r` runs the failed provisioner again, and the
/// build then succeeds.
#[test]
fn on_error_ask_on_a_terminal_retries() {
    let k = Kiln::new();
    k.write("r.pkr.hcl", FAILS_ONCE);
    let marker = k.path("ran-once");
    let mut t = Terminal::start(
        &k,
        "build -color=false -on-error=ask -var \"marker=$MARKER\" r.pkr.hcl",
        &[("MARKER", &marker)],
    );
    t.read_until("[r]etry the step? ");
    assert!(
        t.seen.contains("exit code 3") || t.seen.contains("exited with code 3"),
        "{}",
        t.seen
    );
    t.type_line("r");
    let status = t.wait();
    let seen = &t.seen;
    assert!(
        seen.contains("retrying provisioner 1 (shell-local)"),
        "{seen}"
    );
    assert_eq!(status.code(), Some(0), "{seen}");
    assert_eq!(
        seen.matches("[r]etry the step?").count(),
        1,
        "asked once: {seen}"
    );
}

const BREAKPOINT: &str = r#"
variable "marker" {
  type = string
}

source "null" "b" {
  communicator = "none"
}

build {
  sources = ["source.null.b"]

  provisioner "breakpoint" {
    note = "check the machine"
  }

  provisioner "shell-local" {
    inline = ["touch '${var.marker}'"]
  }
}
"#;

/// On a terminal, `breakpoint` pauses the build until Enter.
#[test]
fn breakpoint_pauses_until_enter_on_a_terminal() {
    let k = Kiln::new();
    k.write("b.pkr.hcl", BREAKPOINT);
    let marker = k.path("after-breakpoint");
    let mut t = Terminal::start(
        &k,
        "build -color=false -var \"marker=$MARKER\" b.pkr.hcl",
        &[("MARKER", &marker)],
    );
    t.read_until("paused at breakpoint: check the machine; press Enter to continue");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "the build went on past the breakpoint");
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "kiln exited: {}",
        t.seen
    );
    t.type_line("");
    let status = t.wait();
    assert_eq!(status.code(), Some(0), "{}", t.seen);
    assert!(
        marker.exists(),
        "the provisioner after the breakpoint did not run: {}",
        t.seen
    );
}

/// `timeout` and `max_retries` with `breakpoint` on a terminal: nobody presses Enter, so each
/// attempt times out, the breakpoint pauses again once, and then the build fails.
#[test]
fn breakpoint_timeout_and_max_retries_on_a_terminal() {
    let k = Kiln::new();
    k.write(
        "b.pkr.hcl",
        r#"
source "null" "b" {
  communicator = "none"
}

build {
  sources = ["source.null.b"]

  provisioner "breakpoint" {
    note        = "nobody answers"
    timeout     = "1s"
    max_retries = 1
  }
}
"#,
    );
    let mut t = Terminal::start(&k, "build -color=false b.pkr.hcl", &[]);
    let status = t.wait();
    let seen = &t.seen;
    assert_eq!(status.code(), Some(1), "{seen}");
    assert_eq!(
        seen.matches("paused at breakpoint: nobody answers").count(),
        2,
        "{seen}"
    );
    assert!(seen.contains("(attempt 1 of 2)"), "{seen}");
    assert!(seen.contains("did not finish within 1s"), "{seen}");
}

/// Provisioners that work on the machine fail at once under `communicator = "none"`, naming the
/// provisioner, its place and what the communicator cannot do.
#[test]
fn the_none_communicator_refuses_machine_provisioners() {
    for (provisioner, error) in [
        (
            "provisioner \"shell\" {\n    inline = [\"true\"]\n  }",
            "provisioner 1 (shell) at n.pkr.hcl:9:3",
        ),
        (
            "provisioner \"file\" {\n    content     = \"x\"\n    destination = \"/tmp/x\"\n  }",
            "provisioner 1 (file) at n.pkr.hcl:9:3",
        ),
        (
            "provisioner \"file\" {\n    source      = \"/etc/hostname\"\n    destination = \"got\"\n    direction   = \"download\"\n  }",
            "provisioner 1 (file) at n.pkr.hcl:9:3",
        ),
    ] {
        let k = Kiln::new();
        k.write(
            "n.pkr.hcl",
            &format!(
                "source \"null\" \"n\" {{\n  communicator = \"none\"\n}}\n\nbuild {{\n  sources = [\"source.null.n\"]\n\n  # one provisioner\n  {provisioner}\n}}\n"
            ),
        );
        let r = k.run(&["build", "-color=false", "n.pkr.hcl"]);
        r.expect_code(1);
        let out = r.stdout() + &r.stderr();
        assert!(out.contains(error), "{out}");
        let cannot = if provisioner.contains("download") {
            "the none communicator cannot download files"
        } else {
            "the none communicator cannot upload files"
        };
        assert!(out.contains(cannot), "{out}");
    }
}

/// Every meta-argument with `shell-local` (the real-sshd suite covers them with `shell` and
/// `file`): `only`, `except`, `override`, `pause_before`, `max_retries` and `timeout`.
const META: &str = r#"
variable "counter" {
  type = string
}

source "null" "a" {
  communicator = "none"
}

source "null" "b" {
  communicator = "none"
}

build {
  sources = ["source.null.a", "source.null.b"]

  provisioner "shell-local" {
    only   = ["null.a"]
    inline = ["echo only-a-ran"]
  }

  provisioner "shell-local" {
    except = ["null.a"]
    inline = ["echo except-a-ran"]
  }

  provisioner "shell-local" {
    inline   = ["echo default-${source.name}"]
    override = {
      "null.b" = {
        inline = ["echo overridden-b"]
      }
    }
  }

  provisioner "shell-local" {
    pause_before = "300ms"
    max_retries  = 2
    inline = [
      "n=$(cat '${var.counter}-${source.name}' 2>/dev/null || echo 0); n=$((n + 1))",
      "echo $n > '${var.counter}-${source.name}'",
      "test $n -ge 3",
    ]
  }

  provisioner "shell-local" {
    only    = ["null.b"]
    timeout = "500ms"
    inline  = ["sleep 30"]
  }
}
"#;

#[test]
fn meta_arguments_work_with_shell_local() {
    let k = Kiln::new();
    k.write("m.pkr.hcl", META);
    let counter = k.path("count");
    let var = format!("counter={}", counter.display());
    let started = Instant::now();
    let r = k.run(&["build", "--json", "-var", &var, "m.pkr.hcl"]);
    // `timeout` ends the sleep long before it would finish.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    r.expect_code(1);
    let events: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines = |build: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["build"] == build && e["type"] == "output")
            .map(|e| e["line"].as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (lines("null.a"), lines("null.b"));
    assert!(
        a.contains(&"only-a-ran".into()) && !b.contains(&"only-a-ran".into()),
        "{a:?} {b:?}"
    );
    assert!(
        b.contains(&"except-a-ran".into()) && !a.contains(&"except-a-ran".into()),
        "{a:?} {b:?}"
    );
    assert!(a.contains(&"default-a".into()), "{a:?}");
    assert!(
        b.contains(&"overridden-b".into()) && !b.contains(&"default-b".into()),
        "{b:?}"
    );
    // Two failed attempts, then the third works: on both builds.
    for name in ["a", "b"] {
        let n = std::fs::read_to_string(format!("{}-{name}", counter.display())).unwrap();
        assert_eq!(n.trim(), "3", "attempts on {name}");
    }
    let retries = events
        .iter()
        .filter(|e| e["type"] == "message" && e["text"].as_str().unwrap().contains("retrying"))
        .count();
    assert_eq!(retries, 4, "two retry warnings per build");
    assert!(events.iter().any(|e| e["type"] == "message"
        && e["text"]
            .as_str()
            .unwrap()
            .starts_with("pausing 300ms before provisioner ")));
    let finished = |build: &str| {
        events
            .iter()
            .find(|e| e["build"] == build && e["type"] == "build_finished")
            .unwrap()
            .clone()
    };
    assert_eq!(finished("null.a")["ok"], true);
    let b_end = finished("null.b");
    assert_eq!(b_end["ok"], false);
    assert!(
        b_end["error"]
            .to_string()
            .contains("did not finish within 500ms"),
        "{b_end}"
    );
}

/// Ctrl-C during a docker build: the build container is removed and kiln exits 130.
#[test]
fn interrupting_a_docker_build_removes_its_container() {
    use kiln_testkit::docker::{busybox_image, container_names, engine};
    use std::io::BufRead;
    if engine().is_none() {
        return;
    }
    let k = Kiln::new();
    let source = format!("ctrlc{}", std::process::id());
    let template = format!(
        "source \"docker\" \"{source}\" {{\n  image  = \"{}\"\n  commit = true\n}}\n\
         build {{\n  sources = [\"source.docker.{source}\"]\n  provisioner \"shell\" {{\n    \
         inline = [\"echo started\", \"sleep 600\"]\n  }}\n}}\n",
        busybox_image(&[])
    );
    k.write("d.pkr.hcl", &template);
    let mut child = k
        .cmd(&["build", "--json", "d.pkr.hcl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kiln_pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let ours = |name: &String| name.starts_with("kiln-") && name.ends_with(&format!("-{source}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let container = loop {
        assert!(
            Instant::now() < deadline,
            "the provisioner never started: {seen:?}"
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            seen.push(line);
        }
        let started = seen.iter().any(|l| l.contains("\"line\":\"started\""));
        if let Some(name) = container_names().into_iter().find(|n| ours(n)) {
            if started {
                break name;
            }
        }
    };
    // SAFETY: sending a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(kiln_pid, libc::SIGINT) }, 0);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait_with_output()));
    let out = match done.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(kiln_pid, libc::SIGKILL) };
            panic!("kiln did not exit within 60 s of SIGINT");
        }
    };
    seen.extend(lines.try_iter());
    assert_eq!(
        out.status.code(),
        Some(130),
        "{seen:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = container_names().into_iter().filter(|n| ours(n)).collect();
    assert!(
        left.is_empty(),
        "{container} survived the interrupt: {left:?}"
    );
}
