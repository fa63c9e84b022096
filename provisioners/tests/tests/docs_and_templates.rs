//! Every option of the `shell`, `file` and `breakpoint` provisioners is documented, and the
//! `templates/ssh-null` example is valid as shipped and builds against a throwaway sshd.

use std::path::PathBuf;

use kiln_core::component::Registry;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::runner::{run_plan, RunOptions};
use kiln_core::template::{self, LoadOptions, VarArg};
use kiln_testkit::Sshd;

fn registry() -> Registry {
    let mut registry = Registry::default();
    null::register(&mut registry);
    shell::register(&mut registry);
    file::register(&mut registry);
    breakpoint::register(&mut registry);
    registry
}

/// The repository's root. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests; the compile-time
/// value can name another checkout when several share one target directory.
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

#[test]
fn every_option_is_documented() {
    let registry = registry();
    for kind in ["shell", "file", "breakpoint"] {
        let page = repo_root().join(format!("docs/provisioners/{kind}.md"));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        for opt in registry.provisioners[kind].options() {
            assert!(
                text.contains(&format!("| `{}` |", opt.name)),
                "option `{}` of `{kind}` is not in the table of {}",
                opt.name,
                page.display()
            );
        }
    }
}

fn load_options(var_args: Vec<VarArg>) -> LoadOptions {
    LoadOptions {
        path: repo_root().join("templates/ssh-null"),
        var_args,
        env: Vec::new(),
    }
}

#[test]
fn ssh_null_template_is_valid_with_its_defaults() {
    let opts = load_options(Vec::new());
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry());
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(plan.unwrap().builds.len(), 1);
}

#[tokio::test]
async fn ssh_null_template_builds_against_a_host() {
    let Some(sshd) = Sshd::start() else { return };
    let out = tempfile::tempdir().unwrap();
    let var = |k: &str, v: String| VarArg::Var(k.to_string(), v);
    let opts = load_options(vec![
        var("port", sshd.port().to_string()),
        var("private_key_file", sshd.client_key().display().to_string()),
        var("host_key_fingerprint", sshd.host_key_fingerprint()),
        var("output_dir", out.path().display().to_string()),
    ]);
    let registry = registry();
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry);
    let plan = plan.unwrap_or_else(|| panic!("{diags}"));
    let (sink, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let summary = run_plan(&plan, &registry, RunOptions::default(), sink).await;
    let mut lines = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let EventKind::Output { line, .. } = event.kind {
            lines.push(line);
        }
    }
    assert!(summary.ok(), "{:?}", summary.builds[0].error);
    assert!(
        lines.iter().any(|l| l.starts_with("hello from kiln on ")),
        "{lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("provisioned.txt")).unwrap(),
        "provisioned by existing as root\n"
    );
    // The template's last provisioner tidies the host it provisioned.
    assert!(
        !std::path::Path::new("/tmp/kiln-ssh-null").exists(),
        "the template left /tmp/kiln-ssh-null behind"
    );
}
