//! Unit tests of the qemu builder: configuration checks, QEMU arguments, documentation.

use kiln_core::diag::{FileId, Span};
use kiln_core::plan::ConfigAttr;
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

fn minimal() -> Value {
    json!({
        "iso_url": "/var/tmp/base.qcow2",
        "iso_checksum": "none",
        "disk_image": true,
        "ssh_username": "kiln",
    })
}

fn with(extra: Value) -> Value {
    let mut v = minimal();
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

fn errors(attrs: Value) -> String {
    match config::settings(&config(attrs)) {
        Ok(_) => panic!("configure accepted an invalid config"),
        Err(d) => {
            d.0.iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

#[test]
fn a_minimal_config_has_packer_defaults() {
    let s = config::settings(&config(minimal())).unwrap();
    assert_eq!(s.format, Format::Qcow2);
    assert_eq!(s.qemu_binary, "qemu-system-x86_64");
    assert_eq!(s.shutdown_timeout, Duration::from_secs(300));
    assert!(s.cloud_init);
    assert_eq!(s.urls, vec!["/var/tmp/base.qcow2".to_string()]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = errors(json!({ "format": "vmdk", "accelerator": "hvf", "disk_size": "lots" }));
    for want in [
        "one of `iso_url` or `iso_urls` is required",
        "`iso_checksum` is required",
        "`format` cannot be `vmdk`",
        "`disk_size` cannot be",
        "`ssh_username` is required",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    if std::env::var(ACCELERATOR_ENV).is_err() {
        assert!(text.contains("`accelerator` cannot be `hvf`"), "{text}");
    }
}

#[test]
fn backing_files_need_qcow2_and_bad_checksums_are_refused() {
    let text = errors(with(json!({ "use_backing_file": true, "format": "raw" })));
    assert!(text.contains("`use_backing_file` needs"), "{text}");
    let text = errors(with(json!({ "iso_checksum": "md5:00" })));
    assert!(text.contains("unsupported algorithm `md5`"), "{text}");
}

#[test]
fn disk_sizes() {
    assert_eq!(config::parse_disk_size(&json!(2048)), Some(2048 << 20));
    assert_eq!(config::parse_disk_size(&json!("10G")), Some(10 << 30));
    assert_eq!(config::parse_disk_size(&json!("512MiB")), Some(512 << 20));
    assert_eq!(config::parse_disk_size(&json!("1.5G")), None);
}

#[test]
fn qemuargs_replace_defaults_with_the_same_flag() {
    let s = config::settings(&config(with(json!({
        "qemuargs": [["-m", "2G"], ["-rtc", "base=utc"]],
    }))))
    .unwrap();
    let state = State {
        vm_name: "vm".into(),
        work_disk: "/o/.vm.work.qcow2".into(),
        accelerator: "tcg",
        ssh_port: 2222,
        ..State::default()
    };
    let args = qemu_args(&s, &state).join(" ");
    assert!(args.contains("-m 2G"), "{args}");
    assert!(!args.contains("-m 1024M"), "{args}");
    assert!(args.ends_with("-rtc base=utc"), "{args}");
    assert!(args.contains("-accel tcg"), "{args}");
    assert!(args.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{args}");
    assert!(
        args.contains("file=/o/.vm.work.qcow2,if=virtio,cache=writeback"),
        "{args}"
    );
}

fn iso(extra: Value) -> Value {
    let mut v = json!({
        "iso_url": "/isos/installer.iso",
        "iso_checksum": "none",
        "communicator": "none",
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn an_iso_install_boots_the_iso_once_with_a_blank_disk() {
    let s = config::settings(&config(iso(json!({
        "boot_command": ["linux /vmlinuz url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/<enter>"],
        "boot_wait_for": "grub>",
        "http_content": { "ks.cfg": "text" },
        "cd_content": { "meta-data": "" },
        "cd_label": "cidata",
    }))))
    .unwrap();
    assert!(!s.disk_image);
    assert!(
        !s.cloud_init,
        "no seed of Kiln's by default for an installer"
    );
    assert_eq!(
        s.boot.wait,
        Duration::ZERO,
        "boot_wait_for replaces the fixed wait"
    );
    assert_eq!(s.boot.key_interval, Duration::from_millis(10));
    let http = s.http.as_ref().unwrap();
    assert_eq!(http.content["/ks.cfg"], "text");
    assert_eq!(http.bind.to_string(), "127.0.0.1");
    assert_eq!(s.cd.as_ref().unwrap().label.as_deref(), Some("cidata"));
    let state = State {
        vm_name: "vm".into(),
        source: "/isos/installer.iso".into(),
        work_disk: "/o/.vm.work.qcow2".into(),
        cd: Some("/run/cd.iso".into()),
        accelerator: "tcg",
        ..State::default()
    };
    let args = qemu_args(&s, &state).join(" ");
    let iso_at = args
        .find("-drive file=/isos/installer.iso,media=cdrom,readonly=on,format=raw")
        .expect(&args);
    let cd_at = args
        .find("-drive file=/run/cd.iso,media=cdrom,readonly=on,format=raw")
        .expect(&args);
    assert!(iso_at < cd_at, "the installer is the first CD-ROM: {args}");
    assert!(args.contains("-boot once=d"), "{args}");
    assert!(!args.contains("pflash"), "{args}");

    // A disk image boots from its disk, without `-boot`.
    let s = config::settings(&config(minimal())).unwrap();
    assert!(!qemu_args(&s, &state).join(" ").contains("-boot"));
}

#[test]
fn efi_boot_attaches_the_code_read_only_and_a_private_variable_store() {
    let s = config::settings(&config(iso(json!({
        "efi_boot": true,
        "efi_firmware_code": "/fw/CODE.fd",
    }))))
    .unwrap();
    assert_eq!(
        s.firmware,
        Firmware::Efi {
            code: Some("/fw/CODE.fd".into()),
            vars: None,
            drop_vars: false
        }
    );
    let state = State {
        efi_vars: Some("/run/efivars.fd".into()),
        ..State::default()
    };
    let args = qemu_args(&s, &state).join(" ");
    assert!(
        args.contains("-drive if=pflash,unit=1,format=raw,file=/run/efivars.fd"),
        "{args}"
    );
    assert!(
        args.contains("if=pflash,unit=0,format=raw,readonly=on"),
        "{args}"
    );
    let s = config::settings(&config(iso(json!({ "firmware": "/fw/bios.bin" })))).unwrap();
    assert!(qemu_args(&s, &State::default())
        .join(" ")
        .contains("-bios /fw/bios.bin"));
}

#[test]
fn iso_options_are_checked() {
    let text = errors(iso(json!({
        "use_backing_file": true,
        "boot_command": ["{{ .HTTPPort }}", "{{ .Nope }}"],
        "boot_wait": "soon",
        "http_port_min": 9000,
        "http_port_max": 8000,
        "cd_label": "x",
        "cd_content": { "../escape": "" },
        "firmware": "/fw/bios.bin",
        "efi_boot": true,
        "shutdown_command": "poweroff",
    })));
    for want in [
        "`use_backing_file` needs `disk_image = true`",
        "`{{ .HTTPPort }}` needs `http_directory` or `http_content`",
        "unknown placeholder `{{ .Nope }}`",
        "`http_port_min` is above `http_port_max`",
        "`../escape` cannot be a path on the CD",
        "`firmware` and `efi_boot` conflict",
        "`shutdown_command` needs a communicator",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let text = errors(iso(json!({
        "http_directory": "www",
        "http_content": { "/a": "b" },
        "cd_label": "x",
        "efi_drop_efivars": true,
    })));
    for want in [
        "`http_directory` and `http_content` conflict",
        "`cd_label` without `cd_files` or `cd_content`",
        "`efi_drop_efivars` needs `efi_boot = true`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn register_adds_the_kind() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert_eq!(registry.builders["qemu"].type_name(), "qemu");
}

#[test]
fn every_option_is_documented() {
    let page = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../docs/builders/qemu.md");
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

#[test]
fn abandoned_vms_say_how_to_reach_them() {
    let s = config::settings(&config(minimal())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = write_private_key(dir.path(), "PEM").unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let state = State {
        pid: Some(4242),
        ssh_port: 2222,
        key_file: Some(key.clone()),
        ..State::default()
    };
    let leftovers = Launch(&s).leftovers(&state);
    assert_eq!(leftovers[0].what, "QEMU process group 4242");
    assert_eq!(
        leftovers[0].how_to_reach.as_deref(),
        Some(format!("ssh -i {} -p 2222 kiln@127.0.0.1", key.display()).as_str())
    );
    assert!(Launch(&s).leftovers(&State::default()).is_empty());
}
