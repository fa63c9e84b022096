//! The real `kiln` binary, with the real components, over every example template in
//! `templates/` (all valid) and every malformed fixture of the template tests (all rejected with
//! the diagnostic their snapshot expects).

use std::path::{Path, PathBuf};

use crate::fixture::{repo, Kiln};

/// Values for example variables that have no default because only the user can know them.
const REQUIRED_VARS: &[(&str, &[&str])] = &[
    ("qemu-hello", &["base_image=/var/tmp/base.qcow2"]),
    ("qemu-installer", &["installer_iso=/var/tmp/installer.iso"]),
];

#[test]
fn validate_accepts_every_example_template() {
    let k = Kiln::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("templates")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut args = vec!["validate"];
        for (_, vars) in REQUIRED_VARS.iter().filter(|(t, _)| *t == name) {
            for var in vars.iter() {
                args.extend(["-var", var]);
            }
        }
        args.push(dir.to_str().unwrap());
        let r = k.run(&args);
        assert_eq!(r.code(), 0, "{}:\n{}", dir.display(), r.stderr());
        seen += 1;
    }
    assert!(seen >= 2, "no example templates found");
}

fn fixtures() -> PathBuf {
    repo().join("crates/kiln-core/tests/fixtures")
}

/// The command line and environment a fixture's `.args` sidecar asks for.
fn inputs(fixture: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = Vec::new();
    let mut env = Vec::new();
    let sidecar = PathBuf::from(format!("{}.args", fixture.display()));
    for line in std::fs::read_to_string(sidecar).unwrap_or_default().lines() {
        let (kind, rest) = line.split_once(' ').expect("`KIND VALUE` in an .args file");
        match kind {
            "env" => {
                let (k, v) = rest.split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
            }
            "-var-file" => {
                args.push("-var-file".to_string());
                args.push(fixtures().join(rest).display().to_string());
            }
            _ => {
                args.push(kind.to_string());
                args.push(rest.to_string());
            }
        }
    }
    (args, env)
}

/// What the real binary must print for a fixture: the first location (`--> file:line:col`) of
/// its diagnostics snapshot, or the first `error: ...` line when the error has no location. (The
/// wording of component errors differs between the real components and the template tests' own
/// registry; where the error is, may not.)
fn expected_error(name: &str) -> String {
    let snap = repo().join(format!(
        "crates/kiln-core/tests/snapshots/templates__invalid_templates@{name}.snap"
    ));
    let text = std::fs::read_to_string(&snap).unwrap_or_else(|e| panic!("{}: {e}", snap.display()));
    let body = text.splitn(3, "---\n").nth(2).unwrap_or(&text);
    let first = body
        .split("\n\n")
        .next()
        .unwrap_or_else(|| panic!("no error in {}", snap.display()));
    first
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> ").map(str::to_string))
        .or_else(|| {
            first
                .lines()
                .find(|l| l.starts_with("error: "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no error in {}", snap.display()))
}

/// Fixtures about component kinds and options that only the template tests' own registry has (a
/// `docker` kind with a required option, a `null` source with a `volume` block): the real binary
/// must reject them too, for its own reason.
const REGISTRY_SPECIFIC: &[&str] = &[
    "missing-required-option.pkr.hcl",
    "nested-block-bad-type.pkr.hcl",
    "nested-block-unknown-attribute.pkr.hcl",
];

#[test]
fn validate_rejects_every_malformed_fixture_with_its_diagnostic() {
    let k = Kiln::new();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".args"))
        .collect();
    entries.sort();
    for fixture in entries {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let (args, env) = inputs(&fixture);
        let mut cmd = k.cmd(&["validate"]);
        cmd.args(&args).arg(&fixture).env("NO_COLOR", "1");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        if REGISTRY_SPECIFIC.contains(&name.as_str()) {
            checked += 1;
            continue;
        }
        // Snapshots name files relative to kiln-core; this run names them absolutely.
        let expected =
            expected_error(&name).replace("tests/fixtures/", &format!("{}/", fixtures().display()));
        assert!(
            stderr.contains(&expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} malformed fixtures");
}
