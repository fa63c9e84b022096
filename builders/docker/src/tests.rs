//! Tests of the docker builder's configuration and of the committed image's config.

use std::path::PathBuf;

use bollard::models::{ImageConfig, ImageInspect};
use serde_json::{json, Value};

use super::*;

fn config(attrs: Value) -> Config {
    Config::from_json(TYPE_NAME, attrs)
}

fn error(attrs: Value) -> String {
    match settings(&config(attrs), None) {
        Ok(s) => panic!("accepted an invalid config: {s:?}"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn defaults_follow_packer() {
    let s = settings(&config(json!({ "image": "busybox", "commit": true })), None).unwrap();
    assert!(s.pull);
    assert!(s.fix_upload_owner);
    assert_eq!(s.output, Output::Commit);
    assert_eq!(s.run_command, KEEP_ALIVE);
    assert_eq!(s.source_date_epoch, None);
}

#[test]
fn exactly_one_output_is_required() {
    let none = error(json!({ "image": "busybox" }));
    assert!(
        none.contains("exactly one") && none.contains("none is set"),
        "{none}"
    );
    let two = error(json!({ "image": "busybox", "commit": true, "discard": true }));
    assert!(two.contains("commit and discard are set"), "{two}");
    let s = settings(
        &config(json!({ "image": "busybox", "export_path": "out/image.tar" })),
        None,
    )
    .unwrap();
    assert_eq!(s.output, Output::Export(PathBuf::from("out/image.tar")));
}

#[test]
fn image_is_required_and_run_command_takes_no_cli_flags() {
    assert!(error(json!({ "commit": true })).contains("needs an `image`"));
    let flags = error(json!({
        "image": "busybox",
        "commit": true,
        "run_command": ["-d", "-i", "-t", "--", "{{.Image}}"],
    }));
    assert!(flags.contains("not `docker run` flags"), "{flags}");
}

#[test]
fn source_date_epoch_implies_reproducible_output() {
    let c = config(json!({ "image": "busybox", "commit": true }));
    let s = settings(&c, Some("1700000000".to_string())).unwrap();
    assert_eq!(s.source_date_epoch, Some(1_700_000_000));
    let off = config(json!({ "image": "busybox", "commit": true, "reproducible": false }));
    assert_eq!(
        settings(&off, Some("5".to_string()))
            .unwrap()
            .source_date_epoch,
        None
    );
    let on = config(json!({ "image": "busybox", "commit": true, "reproducible": true }));
    assert_eq!(settings(&on, None).unwrap().source_date_epoch, Some(0));
    assert!(settings(&c, Some("yesterday".to_string())).is_err());
    let oci = json!({ "image": "busybox", "commit": true, "oci_layout": "out/oci" });
    assert!(error(oci.clone()).contains("`oci_layout` needs reproducible output"));
    assert!(settings(&config(oci), Some("1".to_string())).is_ok());
}

#[test]
fn volumes_become_binds_and_login_becomes_credentials() {
    let s = settings(
        &config(json!({
            "image": "busybox",
            "discard": true,
            "volumes": { "/host/data": "/data" },
            "login": true,
            "login_server": "127.0.0.1:5000",
            "login_username": "u",
            "login_password": "p",
        })),
        None,
    )
    .unwrap();
    assert_eq!(s.binds, ["/host/data:/data"]);
    let creds = s.credentials.unwrap();
    assert_eq!(creds.serveraddress.as_deref(), Some("127.0.0.1:5000"));
    assert!(
        error(json!({ "image": "b", "discard": true, "login": true })).contains("login_server")
    );
}

#[test]
fn committed_config_keeps_the_base_and_drops_build_flags() {
    let base = ImageInspect {
        config: Some(ImageConfig {
            cmd: Some(vec!["serve".to_string()]),
            entrypoint: None,
            env: Some(vec!["A=1".to_string()]),
            working_dir: Some("/srv".to_string()),
            user: Some("nobody".to_string()),
            ..ImageConfig::default()
        }),
        ..ImageInspect::default()
    };
    let c = steps::image_config(&base);
    assert_eq!(c.cmd.as_deref(), Some(&["serve".to_string()][..]));
    // Present but empty, so that the engine does not fill in the keep-alive command.
    assert_eq!(c.entrypoint, Some(Vec::new()));
    assert_eq!(c.env.as_deref(), Some(&["A=1".to_string()][..]));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!((c.tty, c.open_stdin), (Some(false), Some(false)));
    assert_eq!(c.hostname, None);
}

#[test]
fn platforms_compare_the_parts_both_sides_name() {
    let image = |os: &str, arch: &str, variant: Option<&str>| ImageInspect {
        os: Some(os.to_string()),
        architecture: Some(arch.to_string()),
        variant: variant.map(str::to_string),
        ..ImageInspect::default()
    };
    let amd64 = image("linux", "amd64", None);
    assert_eq!(steps::platform_mismatch("", &amd64), None);
    assert_eq!(steps::platform_mismatch("linux", &amd64), None);
    assert_eq!(steps::platform_mismatch("linux/amd64", &amd64), None);
    assert_eq!(steps::platform_mismatch("Linux/x86_64", &amd64), None);
    assert_eq!(
        steps::platform_mismatch("linux/arm64", &amd64).as_deref(),
        Some("linux/amd64")
    );
    assert_eq!(
        steps::platform_mismatch("windows/amd64", &amd64).as_deref(),
        Some("linux/amd64")
    );
    let arm = image("linux", "arm", Some("v7"));
    assert_eq!(steps::platform_mismatch("linux/arm", &arm), None);
    assert_eq!(
        steps::platform_mismatch("linux/arm/v6", &arm).as_deref(),
        Some("linux/arm/v7")
    );
    // The engine reports no variant for most arm64 images.
    let arm64 = image("linux", "aarch64", None);
    assert_eq!(steps::platform_mismatch("linux/arm64/v8", &arm64), None);
}

#[test]
fn register_adds_the_kind() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert_eq!(registry.builders["docker"].type_name(), "docker");
}

#[test]
fn every_option_is_documented() {
    let page = manifest_dir().join("../../docs/builders/docker.md");
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

/// This crate's directory (the compile-time value can name another checkout).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
