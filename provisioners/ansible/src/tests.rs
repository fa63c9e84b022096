//! Unit tests of the `ansible` provisioner: configuration, command lines, environment, and the
//! errors raised before Ansible runs. Runs against a real sshd are in `tests/ansible.rs`.

use std::path::PathBuf;

use kiln_core::diag::{FileId, Span};
use kiln_core::event::{EventSink, Redactor};
use kiln_core::runner::{Cancel, OnError};
use kiln_core::sensitive::Sensitive;
use serde_json::{json, Value};

use super::*;

fn span(n: usize) -> Span {
    Span::new(FileId(0), n, n + 1)
}

/// A `Config` with the attributes of `attrs`; attribute `i` has span `i + 1`, the block 100.
fn config(attrs: Value) -> Config {
    Config::from_json(TYPE_NAME, attrs)
}

/// A playbook file that exists (its content does not matter here).
fn playbook() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.yml");
    std::fs::write(&path, "- hosts: all\n  tasks: []\n").unwrap();
    (dir, path)
}

fn settings(attrs: Value) -> Settings {
    Settings::from_config(&config(attrs)).unwrap_or_else(|d| panic!("configure failed: {d}"))
}

fn errors(attrs: Value) -> Diagnostics {
    match Settings::from_config(&config(attrs)) {
        Ok(s) => panic!("accepted an invalid config: {s:?}"),
        Err(d) => d,
    }
}

fn build_ctx() -> BuildCtx {
    let (sink, _rx) = EventSink::channel(uuid::Uuid::nil(), Redactor::default());
    BuildCtx {
        run_id: sink.run_id(),
        build_name: "web.null.first".to_string(),
        source_type: "null".to_string(),
        source_name: "first".to_string(),
        events: sink.for_build("web.null.first"),
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

fn ssh_conn() -> ConnInfo {
    ConnInfo {
        conn_type: "ssh".to_string(),
        host: Some("127.0.0.1".to_string()),
        port: Some(2222),
        user: Some("builder".to_string()),
        ssh_private_key: Some(Sensitive::new("KEY".to_string())),
        ssh_host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5".to_string()),
        ..ConnInfo::default()
    }
}

#[test]
fn defaults() {
    let (_dir, pb) = playbook();
    let s = settings(json!({ "playbook_file": pb }));
    assert_eq!(s.playbook, pb);
    assert_eq!(s.command, "ansible-playbook");
    assert_eq!(s.host_alias, "default");
    assert!(s.galaxy.is_none());
    assert!(s.user.is_none());
    assert!(!s.keep_inventory_file);
}

#[test]
fn playbook_file_is_required_and_must_exist() {
    let d = errors(json!({}));
    assert!(d.to_string().contains("needs `playbook_file`"), "{d}");
    assert_eq!(d.0[0].span, Some(span(100)));

    let d = errors(
        json!({ "galaxy_file": "/nonexistent/req.yml", "playbook_file": "/nonexistent/site.yml" }),
    );
    let text = d.to_string();
    assert!(
        text.contains("`/nonexistent/site.yml` does not exist"),
        "{text}"
    );
    assert!(
        text.contains("`/nonexistent/req.yml` does not exist"),
        "{text}"
    );
    let spans: Vec<_> = d.0.iter().map(|d| d.span).collect();
    assert!(
        spans.contains(&Some(span(1))) && spans.contains(&Some(span(2))),
        "{spans:?}"
    );
}

#[test]
fn use_proxy_true_is_refused_with_the_reason() {
    let (_dir, pb) = playbook();
    let d = errors(json!({ "playbook_file": pb, "use_proxy": true }));
    assert!(d.to_string().contains("directly over SSH"), "{d}");
    assert_eq!(d.0[0].span, Some(span(2)));

    settings(json!({ "playbook_file": pb, "use_proxy": false }));
}

#[test]
fn bad_options_point_at_their_attribute() {
    let (_dir, pb) = playbook();
    let d = errors(json!({ "playbook_file": pb, "ansible_env_vars": ["NOEQUALS"] }));
    assert!(d.to_string().contains("`NOEQUALS`"), "{d}");
    assert_eq!(d.0[0].span, Some(span(2)));

    let d = errors(json!({ "playbook_file": pb, "inventory_directory": "/nonexistent/inv" }));
    assert!(
        d.to_string().contains("`/nonexistent/inv` does not exist"),
        "{d}"
    );

    let d = errors(json!({ "playbook_file": pb, "host_alias": " " }));
    assert!(d.to_string().contains("`host_alias` is empty"), "{d}");

    let d = errors(json!({ "playbook_file": pb, "extra_arguments": "-v" }));
    assert!(d.to_string().contains("`extra_arguments`"), "{d}");
}

#[test]
fn playbook_command_line() {
    let (dir, pb) = playbook();
    let s = settings(json!({
        "playbook_file": pb,
        "command": "/opt/ansible/bin/ansible-playbook",
        "extra_arguments": ["-v", "--tags", "base"],
    }));
    let inventory = dir.path().join("inv.json");
    let vars = extra_vars(&build_ctx(), &ssh_conn());
    let inv = playbook_invocation(&s, &inventory, &vars, &BTreeMap::new());
    assert_eq!(inv.program, "/opt/ansible/bin/ansible-playbook");
    let args: Vec<String> = inv
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args[0..2],
        ["--inventory".to_string(), inventory.display().to_string()]
    );
    assert_eq!(args[2], "--extra-vars");
    assert_eq!(args[4..7], ["-v", "--tags", "base"]);
    assert_eq!(args[7], pb.display().to_string());
    assert_eq!(args.len(), 8);
    assert_eq!(inv.what, format!("playbook `{}`", pb.display()));

    let vars: Value = serde_json::from_str(&args[3]).unwrap();
    assert_eq!(
        vars,
        json!({
            "packer_build_name": "first",
            "packer_builder_type": "null",
            "kiln_build_name": "web.null.first",
            "kiln_run_id": uuid::Uuid::nil().to_string(),
        })
    );
}

#[test]
fn galaxy_runs_only_with_a_galaxy_file_and_installs_into_roles_path() {
    let (dir, pb) = playbook();
    assert!(
        galaxy_invocation(&settings(json!({ "playbook_file": pb })), &BTreeMap::new()).is_none()
    );

    let req = dir.path().join("requirements.yml");
    std::fs::write(&req, "roles: []\n").unwrap();
    let s =
        settings(json!({ "playbook_file": pb, "galaxy_file": req, "roles_path": "/srv/roles" }));
    let inv = galaxy_invocation(&s, &BTreeMap::new()).unwrap();
    assert_eq!(inv.program, "ansible-galaxy");
    let args: Vec<_> = inv
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args,
        [
            "install",
            "-r",
            &req.display().to_string(),
            "-p",
            "/srv/roles"
        ]
    );
}

#[test]
fn environment_has_roles_path_and_the_users_variables_win() {
    let (_dir, pb) = playbook();
    let s = settings(json!({
        "playbook_file": pb,
        "roles_path": "/srv/roles",
        "ansible_env_vars": ["ANSIBLE_ROLES_PATH=/mine", "ANSIBLE_FORCE_COLOR=1", "EMPTY="],
    }));
    let env = environment(&s);
    assert_eq!(env["ANSIBLE_ROLES_PATH"], "/mine");
    assert_eq!(env["ANSIBLE_FORCE_COLOR"], "1");
    assert_eq!(env["EMPTY"], "");
    assert_eq!(env["PYTHONUNBUFFERED"], "1");

    let s = settings(json!({ "playbook_file": pb, "roles_path": "/srv/roles" }));
    assert_eq!(environment(&s)["ANSIBLE_ROLES_PATH"], "/srv/roles");
}

#[test]
fn http_addr_reaches_the_playbook() {
    let conn = ConnInfo {
        http_addr: Some("10.0.2.2:8080".to_string()),
        ..ssh_conn()
    };
    assert_eq!(
        extra_vars(&build_ctx(), &conn)["packer_http_addr"],
        "10.0.2.2:8080"
    );
}

/// Runs the provisioner configured from `attrs` against `conn`; returns its error text.
async fn run_err(attrs: Value, conn: ConnInfo) -> String {
    let p = AnsibleKind.configure(&config(attrs)).unwrap();
    let ctx = build_ctx();
    let err = p
        .provision(&ProvisionCtx {
            build: &ctx,
            comm: &kiln_comm::NoneCommunicator,
            conn: &conn,
        })
        .await
        .unwrap_err();
    err.to_string()
}

#[tokio::test]
async fn other_communicators_are_refused_for_now() {
    let (_dir, pb) = playbook();
    let conn = ConnInfo {
        conn_type: "none".to_string(),
        ..ConnInfo::default()
    };
    let err = run_err(json!({ "playbook_file": pb }), conn).await;
    assert!(err.contains("needs the ssh communicator"), "{err}");
    assert!(err.contains("`none`") && err.contains("later"), "{err}");
}

#[tokio::test]
async fn a_machine_behind_a_jump_host_is_refused_with_the_reason() {
    let (_dir, pb) = playbook();
    let conn = ConnInfo {
        ssh_bastion: Some("192.0.2.10:2222".to_string()),
        ..ssh_conn()
    };
    let err = run_err(json!({ "playbook_file": pb }), conn).await;
    assert!(err.contains("jump host `192.0.2.10:2222`"), "{err}");
    assert!(err.contains("ssh_bastion_host"), "{err}");
}

#[tokio::test]
async fn missing_connection_facts_are_named() {
    let (_dir, pb) = playbook();
    let attrs = || json!({ "playbook_file": pb });

    let conn = ConnInfo {
        ssh_host_key: None,
        ..ssh_conn()
    };
    let err = run_err(attrs(), conn).await;
    assert!(
        err.contains("did not report the machine's SSH host key"),
        "{err}"
    );

    let conn = ConnInfo {
        ssh_private_key: None,
        ..ssh_conn()
    };
    let err = run_err(attrs(), conn).await;
    assert!(err.contains("SSH private key"), "{err}");

    let conn = ConnInfo {
        user: None,
        ..ssh_conn()
    };
    let err = run_err(attrs(), conn).await;
    assert!(err.contains("set `user`"), "{err}");

    let conn = ConnInfo {
        ssh_host_key: Some("garbage".to_string()),
        ..ssh_conn()
    };
    let err = run_err(attrs(), conn).await;
    assert!(err.contains("host key"), "{err}");
}

#[tokio::test]
async fn a_missing_program_says_to_install_ansible() {
    let (_dir, pb) = playbook();
    let inventory_dir = tempfile::tempdir().unwrap();
    let attrs = json!({
        "playbook_file": pb,
        "command": "kiln-no-such-ansible-playbook",
        "inventory_directory": inventory_dir.path(),
    });
    let err = run_err(attrs, ssh_conn()).await;
    assert!(
        err.contains("`kiln-no-such-ansible-playbook` was not found"),
        "{err}"
    );
    assert!(err.contains("install Ansible"), "{err}");
    let left: Vec<_> = std::fs::read_dir(inventory_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_failing_galaxy_install_stops_before_the_playbook() {
    let (dir, pb) = playbook();
    let req = dir.path().join("requirements.yml");
    std::fs::write(&req, "roles: []\n").unwrap();
    let attrs = json!({
        "playbook_file": pb,
        "galaxy_file": req,
        "galaxy_command": "false",
        // Reaching the playbook would fail differently: this program does not exist.
        "command": "kiln-no-such-ansible-playbook",
    });
    let err = run_err(attrs, ssh_conn()).await;
    assert_eq!(
        err,
        format!(
            "`false` exited with code 1 running galaxy file `{}`",
            req.display()
        )
    );
}

#[test]
fn register_adds_the_provisioner() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert!(registry.provisioners.contains_key("ansible"));
}

#[test]
fn every_option_is_documented() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let page = dir.join("../../docs/provisioners/ansible.md");
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
