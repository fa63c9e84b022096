//! `kiln validate` and `kiln inspect` (need the template language: pass once merged).

use crate::fixture::{repo, Kiln};

#[test]
fn accepts_the_hello_template() {
    let k = Kiln::new();
    let hello = repo().join("templates/hello");
    let r = k.run(&["validate", hello.to_str().unwrap()]);
    r.expect_code(0);
    assert!(
        r.stdout().contains("The configuration is valid."),
        "{}",
        r.stdout()
    );
    let r = k.run(&["validate", "-syntax-only", hello.to_str().unwrap()]);
    r.expect_code(0);
}

/// `path:line:col` somewhere in `text`, for a file named `name`.
fn has_location(text: &str, name: &str) -> bool {
    text.split(name).skip(1).any(|rest| {
        let mut parts = rest.splitn(3, ':');
        parts.next() == Some("")
            && parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
            && parts
                .next()
                .is_some_and(|c| c.chars().next().is_some_and(|c| c.is_ascii_digit()))
    })
}

#[test]
fn rejects_a_syntax_error_with_its_location() {
    let k = Kiln::new();
    k.write(
        "bad.pkr.hcl",
        "source \"null\" \"a\" {\n  communicator = \"none\"\n}\n\nbuild {\n  sources = [\"source.null.a\"\n}\n",
    );
    let r = k.run(&["validate", "bad.pkr.hcl"]);
    r.expect_code(2);
    assert!(has_location(&r.stderr(), "bad.pkr.hcl"), "{}", r.stderr());
    assert!(!r.stdout().contains("valid"), "{}", r.stdout());
}

#[test]
fn rejects_an_unknown_option_with_its_location() {
    let k = Kiln::new();
    k.write(
        "bad.pkr.hcl",
        "source \"null\" \"a\" {\n  communicator = \"none\"\n  communicatorr = \"x\"\n}\n\nbuild {\n  sources = [\"source.null.a\"]\n}\n",
    );
    let r = k.run(&["validate", "-color=false", "bad.pkr.hcl"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(has_location(&err, "bad.pkr.hcl"), "{err}");
    assert!(err.contains("bad.pkr.hcl:3:"), "points at line 3: {err}");
    assert!(!err.contains('\x1b'), "colour with -color=false: {err:?}");
}

#[test]
fn only_selects_builds() {
    let k = Kiln::new();
    let hello = repo().join("templates/hello");
    k.run(&["validate", "-only=*.first", hello.to_str().unwrap()])
        .expect_code(0);
}

#[test]
fn inspect_hides_sensitive_values() {
    let k = Kiln::new();
    let hello = repo().join("templates/hello");
    let r = k.run(&["inspect", hello.to_str().unwrap()]);
    r.expect_code(0);
    let out = r.stdout();
    assert!(out.contains("var.api_token: <sensitive>"), "{out}");
    assert!(!out.contains("not-a-real-token-42"), "{out}");
    assert!(out.contains("null.first"), "{out}");
    assert!(out.contains("shell-local"), "{out}");
    assert!(out.contains("manifest"), "{out}");
}

#[test]
fn var_and_var_file_apply_in_command_line_order() {
    let k = Kiln::new();
    let hello = repo().join("templates/hello");
    let hello = hello.to_str().unwrap();
    k.write("v.pkrvars.hcl", "greeting = \"from-file\"\n");
    let r = k.run(&[
        "inspect",
        "-var",
        "greeting=from-flag",
        "-var-file=v.pkrvars.hcl",
        hello,
    ]);
    r.expect_code(0);
    assert!(
        r.stdout().contains("var.greeting: \"from-file\""),
        "{}",
        r.stdout()
    );
    let r = k.run(&[
        "inspect",
        "-var-file",
        "v.pkrvars.hcl",
        "-var=greeting=from-flag",
        hello,
    ]);
    r.expect_code(0);
    assert!(
        r.stdout().contains("var.greeting: \"from-flag\""),
        "{}",
        r.stdout()
    );
}

/// Option values are converted to their declared types as Packer's HCL does: a string variable
/// for a number option is accepted, one that is not a number is an error at its attribute.
#[test]
fn option_values_are_converted_to_their_declared_types() {
    let k = Kiln::new();
    let template = |port: &str| {
        format!(
            "variable \"port\" {{\n  type    = string\n  default = \"{port}\"\n}}\n\n\
             source \"null\" \"a\" {{\n  communicator = \"ssh\"\n  ssh_host     = \"127.0.0.1\"\n  \
             ssh_username = \"u\"\n  ssh_password = \"p\"\n  ssh_port     = var.port\n  \
             ssh_pty      = \"true\"\n}}\n\n\
             build {{\n  sources = [\"source.null.a\"]\n}}\n"
        )
    };
    k.write("good.pkr.hcl", &template("2222"));
    let r = k.run(&["validate", "good.pkr.hcl"]);
    r.expect_code(0);

    k.write("bad.pkr.hcl", &template("twenty-two"));
    let r = k.run(&["validate", "-color=false", "bad.pkr.hcl"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(err.contains("invalid value for `ssh_port`"), "{err}");
    assert!(err.contains("a number is required"), "{err}");
    assert!(err.contains("bad.pkr.hcl:11:"), "points at ssh_port: {err}");
}

#[test]
fn reports_load_and_plan_errors_in_one_run() {
    let k = Kiln::new();
    // `sourcee` is caught while loading the model; the provisioner type only while planning.
    k.write(
        "bad.pkr.hcl",
        "sourcee \"null\" \"b\" {\n}\n\nsource \"null\" \"a\" {\n  communicator = \"none\"\n}\n\nbuild {\n  sources = [\"source.null.a\"]\n  provisioner \"shel\" {\n    inline = [\"true\"]\n  }\n}\n",
    );
    let r = k.run(&["validate", "-color=false", "bad.pkr.hcl"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(err.contains("unknown block `sourcee`"), "{err}");
    assert!(err.contains("bad.pkr.hcl:1:"), "{err}");
    assert!(err.contains("shel"), "{err}");
    assert!(err.contains("bad.pkr.hcl:10:"), "{err}");
}

/// No diagnostic shows a sensitive value: not the one that failed to convert (in a var file, so
/// its snippet line holds it), nor a good one that an option cannot take.
#[test]
fn diagnostics_never_show_sensitive_values() {
    let k = Kiln::new();
    k.write(
        "t.pkr.hcl",
        r#"variable "port" {
  type      = number
  sensitive = true
}

variable "word" {
  type      = string
  default   = "correct-horse-battery"
  sensitive = true
}

source "null" "a" {
  communicator = "ssh"
  ssh_host     = "127.0.0.1"
  ssh_port     = var.word
}

build {
  sources = ["source.null.a"]
}
"#,
    );
    k.write("t.pkrvars.hcl", "port = \"hunter2-port\"\n");
    let r = k.run(&[
        "validate",
        "-color=false",
        "-var-file=t.pkrvars.hcl",
        "t.pkr.hcl",
    ]);
    r.expect_code(2);
    let err = r.stderr();
    // Both problems are reported, each at its place.
    assert!(err.contains("variable `port`"), "{err}");
    assert!(err.contains("t.pkrvars.hcl:1:"), "{err}");
    assert!(
        err.contains("port = \"<sensitive>\""),
        "the snippet hides the value: {err}"
    );
    assert!(err.contains("ssh_port"), "{err}");
    assert!(err.contains("t.pkr.hcl:15:"), "{err}");
    for secret in ["hunter2", "correct-horse", "battery"] {
        assert!(!err.contains(secret), "`{secret}` shown: {err}");
    }
}

/// The attributes of the qemu builder's `qemu_img_args` block are checked like top-level
/// options: a misspelt one is named with a suggestion, a wrong type at its value.
#[test]
fn qemu_img_args_attributes_are_checked() {
    let k = Kiln::new();
    k.write(
        "q.pkr.hcl",
        r#"source "qemu" "q" {
  iso_url      = "base.qcow2"
  iso_checksum = "none"
  disk_image   = true
  communicator = "none"
  qemu_img_args {
    conver = ["-c"]
    create = 3
  }
}

build {
  sources = ["source.qemu.q"]
}
"#,
    );
    let r = k.run(&["validate", "-color=false", "q.pkr.hcl"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(
        err.contains("unknown attribute `conver` in a `qemu_img_args` block of source `qemu.q`"),
        "{err}"
    );
    assert!(err.contains("did you mean `convert`?"), "{err}");
    assert!(err.contains("q.pkr.hcl:7:5"), "{err}");
    assert!(err.contains("invalid value for `create`"), "{err}");
    assert!(err.contains("q.pkr.hcl:8:14"), "{err}");
}
