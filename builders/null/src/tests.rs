//! Tests of the null builder: configuration now; a whole run once `runner::run_steps` exists.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_comm::Communicator;
use kiln_core::diag::{FileId, Span};
use kiln_core::event::{EventSink, Redactor};
use kiln_core::plan::ConfigAttr;
use kiln_core::runner::{Cancel, OnError};
use serde_json::{json, Value};

use super::*;

fn config(attrs: Value) -> Config {
    let Value::Object(map) = attrs else {
        panic!("attrs must be an object")
    };
    Config {
        kind: TYPE_NAME.to_string(),
        attrs: map
            .into_iter()
            .map(|(key, value)| ConfigAttr {
                key,
                value,
                span: Span::new(FileId(0), 10, 20),
            })
            .collect(),
        blocks: Vec::new(),
        span: Span::new(FileId(0), 0, 30),
    }
}

fn configure_error(attrs: Value) -> Diagnostics {
    match NullKind.configure(&config(attrs)) {
        Ok(_) => panic!("configure accepted an invalid config"),
        Err(d) => d,
    }
}

#[test]
fn communicator_defaults_to_none() {
    assert!(NullKind.configure(&config(json!({}))).is_ok());
    assert!(NullKind
        .configure(&config(json!({ "communicator": "none" })))
        .is_ok());
}

#[test]
fn other_communicators_are_rejected_naming_the_allowed_values() {
    let d = configure_error(json!({ "communicator": "winrm" }));
    let diag = &d.0[0];
    assert!(diag.message.contains("`winrm`"), "{diag:?}");
    assert_eq!(diag.label.as_deref(), Some("allowed values: `none`, `ssh`"));
    assert_eq!(diag.span, Some(Span::new(FileId(0), 10, 20)));
    let d = configure_error(json!({ "communicator": 3 }));
    assert!(d.to_string().contains("`communicator`"), "{d}");
}

#[test]
fn ssh_needs_a_host_and_a_user_and_an_existing_key() {
    let d = configure_error(json!({ "communicator": "ssh" }));
    let text = d.to_string();
    assert!(text.contains("`ssh_host` is required"), "{text}");
    assert!(text.contains("`ssh_username` is required"), "{text}");
    let d = configure_error(json!({
        "communicator": "ssh", "ssh_host": "127.0.0.1", "ssh_username": "root",
        "ssh_private_key_file": "/nonexistent/key",
    }));
    assert!(
        d.to_string().contains("`/nonexistent/key` does not exist"),
        "{d}"
    );
    assert!(NullKind
        .configure(&config(json!({
            "communicator": "ssh", "ssh_host": "127.0.0.1", "ssh_username": "root",
            "ssh_port": 2222, "ssh_timeout": "10s",
        })))
        .is_ok());
    let d = configure_error(json!({
        "communicator": "ssh", "ssh_host": "h", "ssh_username": "u", "ssh_timeout": "soon",
    }));
    assert!(d.to_string().contains("invalid duration"), "{d}");
}

#[test]
fn register_adds_the_kind() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert_eq!(registry.builders["null"].type_name(), "null");
}

#[test]
fn every_option_is_documented() {
    let page = manifest_dir().join("../../docs/builders/null.md");
    let text = std::fs::read_to_string(&page)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
    for opt in OPTIONS {
        assert!(
            text.contains(&format!("`{}`", opt.name)),
            "option `{}` is not documented in {}",
            opt.name,
            page.display()
        );
    }
}

/// Counts provision calls and checks what the builder hands over.
#[derive(Default)]
struct CountingHook {
    calls: AtomicUsize,
}

#[async_trait]
impl ProvisionHook for CountingHook {
    async fn provision(
        &self,
        _: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        assert_eq!(conn.conn_type, "none");
        assert_eq!(comm.kind(), "none");
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Fails like a provisioner would.
struct FailingHook;

#[async_trait]
impl ProvisionHook for FailingHook {
    async fn provision(
        &self,
        _: &BuildCtx,
        _: &ConnInfo,
        _: &dyn Communicator,
    ) -> Result<(), BuildError> {
        Err(BuildError::Provisioner {
            what: "provisioner 1 (shell-local)".to_string(),
            source: "exit code 1".into(),
        })
    }
}

fn build_ctx() -> BuildCtx {
    let (sink, _rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    BuildCtx {
        run_id: sink.run_id(),
        build_name: "null.first".to_string(),
        source_type: "null".to_string(),
        source_name: "first".to_string(),
        events: sink,
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

#[tokio::test]
async fn run_provisions_once_and_returns_the_null_artifact() {
    let builder = NullKind.configure(&config(json!({}))).unwrap();
    let hook = CountingHook::default();
    let artifact = builder.run(&build_ctx(), &hook).await.unwrap();
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert_eq!(artifact.builder_type, "null");
    assert_eq!(artifact.id, "Null");
    assert!(artifact.files.is_empty());
}

#[tokio::test]
async fn provisioner_failure_fails_the_build() {
    let builder = NullKind.configure(&config(json!({}))).unwrap();
    let err = builder.run(&build_ctx(), &FailingHook).await.unwrap_err();
    let chain = {
        let mut s = err.to_string();
        let mut src = std::error::Error::source(&err);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    };
    assert!(chain.contains("exit code 1"), "{chain}");
}

/// This crate's directory. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests; the compile-time
/// value can name another checkout when several share one target directory.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
