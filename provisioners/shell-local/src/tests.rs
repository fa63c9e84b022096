//! Tests of the `shell-local` provisioner and post-processor against a real `/bin/sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_comm::NoneCommunicator;
use kiln_core::artifact::Artifact;
use kiln_core::component::{ConnInfo, ProvisionCtx, Registry};
use kiln_core::diag::{FileId, Span};
use kiln_core::event::{Event, EventKind, EventSink, OutputStream, Redactor};
use kiln_core::plan::Config;
use kiln_core::runner::{BuildCtx, Cancel, OnError};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

fn span(n: usize) -> Span {
    Span::new(FileId(0), n, n + 1)
}

/// A `Config` with the attributes of the JSON object `attrs`; attribute `i` has span `i + 1`.
fn config(attrs: Value) -> Config {
    Config::from_json(TYPE_NAME, attrs)
}

fn build_ctx() -> (BuildCtx, UnboundedReceiver<Event>) {
    let (sink, rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let ctx = BuildCtx {
        run_id: sink.run_id(),
        build_name: "hello.null.first".to_string(),
        source_type: "null".to_string(),
        source_name: "first".to_string(),
        events: sink.for_build("hello.null.first"),
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    };
    (ctx, rx)
}

fn provisioner(attrs: Value) -> Box<dyn Provisioner> {
    match ShellLocalProvisionerKind.configure(&config(attrs)) {
        Ok(p) => p,
        Err(d) => panic!("configure failed: {d}"),
    }
}

async fn provision(p: &dyn Provisioner, ctx: &BuildCtx) -> Result<(), kiln_core::BoxError> {
    let conn = ConnInfo {
        conn_type: "none".to_string(),
        ..ConnInfo::default()
    };
    p.provision(&ProvisionCtx {
        build: ctx,
        comm: &NoneCommunicator,
        conn: &conn,
    })
    .await
}

/// Runs a provisioner made of `attrs`; returns its result and the output lines it emitted.
async fn run(attrs: Value) -> (Result<(), String>, Vec<(OutputStream, String)>) {
    let (ctx, mut rx) = build_ctx();
    let result = provision(provisioner(attrs).as_ref(), &ctx)
        .await
        .map_err(|e| e.to_string());
    (result, output_lines(&mut rx))
}

fn output_lines(rx: &mut UnboundedReceiver<Event>) -> Vec<(OutputStream, String)> {
    let mut lines = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let EventKind::Output {
            source,
            stream,
            line,
        } = ev.kind
        {
            assert_eq!(source, "shell-local");
            lines.push((stream, line));
        }
    }
    lines
}

fn stdout(lines: &[(OutputStream, String)]) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, _)| *s == OutputStream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect()
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let _no_spawn = crate::exec::SPAWN_LOCK.lock().unwrap();
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn inline_lines_run_and_output_arrives_in_order() {
    let (result, lines) = run(json!({
        "inline": ["for i in $(seq 1 50); do echo line $i; done", "echo oops >&2"]
    }))
    .await;
    result.unwrap();
    let expected: Vec<String> = (1..=50).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout(&lines), expected);
    assert!(lines.contains(&(OutputStream::Stderr, "oops".to_string())));
}

#[tokio::test]
async fn command_runs() {
    let (result, lines) = run(json!({ "command": "echo from command" })).await;
    result.unwrap();
    assert_eq!(stdout(&lines), ["from command"]);
}

#[tokio::test]
async fn inline_script_is_private_and_removed_afterwards() {
    let (result, lines) = run(json!({
        "inline": ["echo \"$0\"", "stat -c %a \"$0\""],
        "tempfile_extension": ".sh"
    }))
    .await;
    result.unwrap();
    let out = stdout(&lines);
    let script = Path::new(out[0]);
    assert!(out[0].ends_with(".sh"), "{out:?}");
    assert_eq!(out[1], "700");
    assert!(
        !script.exists(),
        "temporary script {script:?} was left behind"
    );
}

#[tokio::test]
async fn inline_shebang_default_stops_at_first_failure() {
    let attrs = |shebang: Option<&str>| {
        let mut v = json!({ "inline": ["false", "echo after"] });
        if let Some(s) = shebang {
            v["inline_shebang"] = json!(s);
        }
        v
    };
    let (result, lines) = run(attrs(None)).await;
    assert!(result.is_err());
    assert!(stdout(&lines).is_empty());
    let (result, lines) = run(attrs(Some("/bin/sh"))).await;
    result.unwrap();
    assert_eq!(stdout(&lines), ["after"]);
}

#[tokio::test]
async fn script_and_scripts_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let a = write_script(dir.path(), "a.sh", &format!("echo a >> {}", log.display()));
    let b = write_script(dir.path(), "b.sh", &format!("echo b >> {}", log.display()));

    let (result, _) = run(json!({ "script": a })).await;
    result.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\n");

    let (result, _) = run(json!({ "scripts": [b, a] })).await;
    result.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nb\na\n");
}

#[tokio::test]
async fn environment_reaches_the_script() {
    let (result, lines) = run(json!({
        "environment_vars": ["FOO=from list", "QUOTED=it's \"fine\" $HOME", "BOTH=list"],
        "env": { "BOTH": "map" },
        "inline": [
            "echo \"$FOO|$QUOTED|$BOTH\"",
            "echo \"$PACKER_BUILD_NAME|$PACKER_BUILDER_TYPE|$KILN_BUILD_NAME\"",
            "test -n \"$KILN_RUN_ID\" && echo has-run-id",
        ]
    }))
    .await;
    result.unwrap();
    assert_eq!(
        stdout(&lines),
        [
            "from list|it's \"fine\" $HOME|map",
            "first|null|hello.null.first",
            "has-run-id"
        ]
    );
}

#[tokio::test]
async fn execute_command_is_rendered() {
    let (result, lines) = run(json!({
        "environment_vars": ["A=1"],
        "execute_command": ["/bin/sh", "-c", "echo \"vars: {{ .Vars }}\"; /bin/sh {{.Script}} extra"],
        "inline": ["echo \"arg: $1\""]
    }))
    .await;
    result.unwrap();
    let out = stdout(&lines);
    assert!(
        out[0].starts_with("vars: A='1' KILN_BUILD_NAME='hello.null.first'"),
        "{out:?}"
    );
    assert_eq!(out[1], "arg: extra");
}

#[tokio::test]
async fn exit_code_outside_valid_exit_codes_is_an_error_naming_it() {
    let (result, _) = run(json!({ "command": "exit 3" })).await;
    let err = result.unwrap_err();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("command `exit 3`"), "{err}");

    let (result, _) = run(json!({ "command": "exit 3", "valid_exit_codes": [0, 3] })).await;
    result.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let s = write_script(dir.path(), "fail.sh", "exit 7");
    let (result, _) = run(json!({ "script": s, "valid_exit_codes": [0, 1] })).await;
    let err = result.unwrap_err();
    assert!(err.contains("fail.sh"), "{err}");
    assert!(err.contains("code 7, expected one of 0, 1"), "{err}");
}

#[tokio::test]
async fn only_on_other_os_skips() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (result, _) = run(json!({
        "only_on": ["windows"],
        "inline": [format!("touch {}", marker.display())]
    }))
    .await;
    result.unwrap();
    assert!(!marker.exists());

    let (result, _) = run(json!({
        "only_on": ["darwin", "linux"],
        "inline": [format!("touch {}", marker.display())]
    }))
    .await;
    result.unwrap();
    assert!(marker.exists());
}

/// True when `pid` no longer runs (gone, or a zombie nobody reaped yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn cancellation_kills_the_process_group() {
    let (ctx, mut rx) = build_ctx();
    let p = provisioner(json!({
        "inline": ["sleep 1000 &", "echo \"child $!\"", "wait"]
    }));
    let run = provision(p.as_ref(), &ctx);
    tokio::pin!(run);
    // Wait for the child's pid to arrive as an output event, then cancel.
    let pid: i32 = loop {
        tokio::select! {
            r = &mut run => panic!("finished before cancellation: {r:?}"),
            ev = rx.recv() => {
                if let Some(EventKind::Output { line, .. }) = ev.map(|e| e.kind) {
                    if let Some(pid) = line.strip_prefix("child ") {
                        break pid.parse().unwrap();
                    }
                }
            }
        }
    };
    assert!(!process_gone(pid));
    ctx.cancel.cancel.cancel();
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("cancellation did not stop the provisioner")
        .unwrap_err();
    assert!(err.to_string().starts_with("cancelled"), "{err}");
    // The group got SIGTERM before `run` returned; give the kernel a moment to finish it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "sleep {pid} survived cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn configure_error(attrs: Value) -> kiln_core::diag::Diagnostics {
    match ShellLocalProvisionerKind.configure(&config(attrs)) {
        Ok(_) => panic!("configure accepted an invalid config"),
        Err(d) => d,
    }
}

#[test]
fn exactly_one_of_command_inline_script_scripts() {
    let d = configure_error(json!({}));
    assert!(d.to_string().contains("needs one of"), "{d}");
    assert_eq!(d.0[0].span, Some(span(100)));

    let d = configure_error(json!({ "command": "true", "inline": ["true"] }));
    assert!(d.to_string().contains("`command` and `inline`"), "{d}");
    assert_eq!(d.0[0].span, Some(span(100)));
}

#[test]
fn bad_options_point_at_their_attribute() {
    let d = configure_error(json!({ "inline": ["true"], "environment_vars": ["NOEQUALS"] }));
    assert!(d.to_string().contains("`NOEQUALS`"), "{d}");
    assert_eq!(d.0[0].span, Some(span(2)));

    let d = configure_error(json!({ "script": "/nonexistent/kiln.sh" }));
    assert!(d.to_string().contains("does not exist"), "{d}");
    assert_eq!(d.0[0].span, Some(span(1)));

    let d = configure_error(json!({ "inline": "not a list" }));
    assert!(d.to_string().contains("`inline`"), "{d}");

    let d = configure_error(json!({ "inline": ["true"], "valid_exit_codes": [] }));
    assert!(d.to_string().contains("valid_exit_codes"), "{d}");
}

#[tokio::test]
async fn post_processor_runs_and_passes_the_artifact_on() {
    let pp = ShellLocalPostProcessorKind
        .configure(&config(json!({
            "inline": ["echo \"$PACKER_BUILDER_TYPE $PACKER_BUILD_NAME\""],
            "keep_input_artifact": false
        })))
        .unwrap();
    let (ctx, mut rx) = build_ctx();
    let input = Artifact {
        builder_type: "null".to_string(),
        id: "Null".to_string(),
        ..Artifact::default()
    };
    let out = pp.process(&ctx, input.clone()).await.unwrap();
    assert_eq!(out.artifact, input);
    assert!(out.keep_input);
    assert_eq!(stdout(&output_lines(&mut rx)), ["null first"]);
}

#[test]
fn register_adds_both_kinds() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert!(registry.provisioners.contains_key("shell-local"));
    assert!(registry.post_processors.contains_key("shell-local"));
}

fn assert_documented(page: &str, options: &[kiln_core::component::OptionSpec]) {
    let path = manifest_dir().join("../..").join(page);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for opt in options {
        assert!(
            text.contains(&format!("`{}`", opt.name)),
            "option `{}` is not documented in {page}",
            opt.name
        );
    }
}

#[test]
fn every_option_is_documented() {
    assert_documented("docs/provisioners/shell-local.md", PROVISIONER_OPTIONS);
    assert_documented(
        "docs/post-processors/shell-local.md",
        POST_PROCESSOR_OPTIONS,
    );
}

/// This crate's directory. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests; the compile-time
/// value can name another checkout when several share one target directory.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
