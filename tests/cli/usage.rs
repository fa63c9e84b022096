//! Version, completions, and usage errors (exit status 2).

use crate::fixture::Kiln;

#[test]
fn version_in_every_spelling() {
    let k = Kiln::new();
    for args in [&["version"][..], &["--version"], &["-version"], &["-v"]] {
        let r = k.run(args);
        r.expect_code(0);
        let out = r.stdout();
        assert!(out.starts_with("Kiln v0.1.0"), "{args:?}: {out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }
}

#[test]
fn completions_for_shells() {
    let k = Kiln::new();
    let r = k.run(&["completions", "bash"]);
    r.expect_code(0);
    assert!(r.stdout().contains("kiln"), "{}", r.stdout());
    assert!(r.stdout().contains("--parallel-builds"));
    k.run(&["completions", "zsh"]).expect_code(0);
    k.run(&["completions", "fish"]).expect_code(0);
    k.run(&["completions", "nosuchshell"]).expect_code(2);
}

#[test]
fn usage_errors_exit_2() {
    let k = Kiln::new();
    for args in [
        &[][..],
        &["nosuchcommand"],
        &["build"],
        &["build", "-on-error=bogus", "."],
        &["build", "-parallel-builds", "many", "."],
        &["build", "-var", "novalue", "."],
        &["validate", "-nosuchflag", "."],
    ] {
        let r = k.run(args);
        assert_eq!(r.code(), 2, "{args:?}\n{}\n{}", r.stdout(), r.stderr());
        assert!(!r.stderr().is_empty(), "{args:?}: nothing on stderr");
    }
}

#[test]
fn help_mentions_single_dash_flags_work() {
    let k = Kiln::new();
    let r = k.run(&["build", "-help"]);
    r.expect_code(0);
    assert!(r.stdout().contains("--on-error"), "{}", r.stdout());
}

#[test]
fn missing_path_is_a_user_error_with_its_cause() {
    let k = Kiln::new();
    let r = k.run(&["fmt", "does-not-exist.pkr.hcl"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(
        err.contains("error: cannot read `does-not-exist.pkr.hcl`"),
        "{err}"
    );
    assert!(err.contains("caused by: "), "{err}");
}
