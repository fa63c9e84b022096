//! `kiln fmt`: check, diff, idempotence, comments, recursion.

use crate::fixture::Kiln;

const UGLY: &str = r#"# keep this comment
source "null" "a" {
communicator="none"
    # and this one
  x_longer_name =   1 // and this
}

build {
sources=["source.null.a"]
  provisioner "shell-local" {
      inline = [
    "echo hi", # trailing
      ]
  }
}
"#;

const PRETTY: &str = r#"# keep this comment
source "null" "a" {
  communicator = "none"
  # and this one
  x_longer_name = 1 // and this
}

build {
  sources = ["source.null.a"]
  provisioner "shell-local" {
    inline = [
      "echo hi", # trailing
    ]
  }
}
"#;

#[test]
fn check_exits_3_and_leaves_the_file() {
    let k = Kiln::new();
    k.write("t.pkr.hcl", UGLY);
    let r = k.run(&["fmt", "-check", "."]);
    r.expect_code(3);
    assert!(r.stdout().contains("t.pkr.hcl"), "{}", r.stdout());
    assert_eq!(k.read("t.pkr.hcl"), UGLY);
}

#[test]
fn writes_canonical_form_and_is_idempotent() {
    let k = Kiln::new();
    k.write("t.pkr.hcl", UGLY);
    k.run(&["fmt", "t.pkr.hcl"]).expect_code(0);
    assert_eq!(k.read("t.pkr.hcl"), PRETTY);
    let again = k.run(&["fmt", "-check", "t.pkr.hcl"]);
    again.expect_code(0);
    assert_eq!(again.stdout(), "");
    k.run(&["fmt", "t.pkr.hcl"]).expect_code(0);
    assert_eq!(k.read("t.pkr.hcl"), PRETTY);
}

#[test]
fn diff_shows_the_change() {
    let k = Kiln::new();
    k.write("t.pkr.hcl", UGLY);
    let r = k.run(&["fmt", "-check", "-diff", "t.pkr.hcl"]);
    r.expect_code(3);
    let out = r.stdout();
    assert!(out.contains("--- old/t.pkr.hcl"), "{out}");
    assert!(out.contains("+++ new/t.pkr.hcl"), "{out}");
    assert!(out.contains("-communicator=\"none\""), "{out}");
    assert!(out.contains("+  communicator = \"none\""), "{out}");
}

#[test]
fn stdin_to_stdout() {
    let k = Kiln::new();
    let mut child = k
        .cmd(&["fmt", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(UGLY.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), PRETTY);
}

#[test]
fn recursive_descends_and_only_takes_template_files() {
    let k = Kiln::new();
    k.write("top.pkr.hcl", UGLY);
    k.write("sub/deep.pkrvars.hcl", "a=1\nbbb=2\n");
    k.write("sub/other.hcl", "a=1\n");
    k.run(&["fmt", "."]).expect_code(0);
    assert_eq!(k.read("top.pkr.hcl"), PRETTY);
    assert_eq!(
        k.read("sub/deep.pkrvars.hcl"),
        "a=1\nbbb=2\n",
        "not recursive"
    );
    let r = k.run(&["fmt", "-recursive", "."]);
    r.expect_code(0);
    assert!(r.stdout().contains("deep.pkrvars.hcl"), "{}", r.stdout());
    assert_eq!(k.read("sub/deep.pkrvars.hcl"), "a   = 1\nbbb = 2\n");
    assert_eq!(k.read("sub/other.hcl"), "a=1\n");
}

#[test]
fn invalid_hcl_is_reported_with_its_location() {
    let k = Kiln::new();
    k.write("bad.pkr.hcl", "build {\n  sources = [\n}\n");
    let r = k.run(&["fmt", "bad.pkr.hcl"]);
    r.expect_code(2);
    assert!(r.stderr().contains("bad.pkr.hcl"), "{}", r.stderr());
    assert!(r.stderr().contains("line "), "{}", r.stderr());
}

#[test]
fn the_example_templates_are_formatted() {
    let k = Kiln::new();
    let dir = crate::fixture::repo().join("templates");
    k.run(&["fmt", "-check", "-recursive", dir.to_str().unwrap()])
        .expect_code(0);
}
