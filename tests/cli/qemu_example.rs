//! vm-test of the README's main job: `kiln build` of `templates/qemu-hello` on the base disk of
//! `vm-tests/base-image.sh` under TCG (real `file` and `shell` provisioners over SSH, cloud-init
//! key and host-key injection), then the produced image booted in a fresh VM and checked from
//! the host (HTTP through `hostfwd`) and from inside (the guest agent). Runs with
//! `KILN_VM_TESTS=1`. And `templates/qemu-installer`: an ISO install typed through QMP, through
//! BIOS and UEFI, checked by reading the installed disk.

use kiln_testkit::vm::{
    base_image, boot_and_check, installed_files, installer_iso, vm_tests_enabled,
};

use crate::fixture::{repo, Kiln, Run};

/// QEMU processes whose command line mentions `needle`.
fn qemu_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains("qemu-system") && text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

/// The qemu builders' runtime directories in the temp directory `tmp`.
fn runtime_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kiln-qemu-"))
        })
        .collect()
}

/// Builds `templates/qemu-hello` with `communicator` and checks the image in a fresh VM.
fn build_and_check_hello(communicator: &str) {
    let base = base_image(&repo());
    let k = Kiln::new();
    let template = repo().join("templates/qemu-hello");
    let run = k.run(&[
        "build",
        "-var",
        &format!("base_image={}", base.display()),
        "-var",
        "accelerator=tcg",
        "-var",
        &format!("communicator={communicator}"),
        template.to_str().unwrap(),
    ]);
    run.expect_code(0);
    let out = format!("{}{}", run.stdout(), run.stderr());
    assert!(
        !out.contains("PRIVATE KEY"),
        "a private key reached the output:\n{out}"
    );

    let output_dir = k.path("output/qemu-hello");
    let mut listing: Vec<String> = std::fs::read_dir(&output_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    assert_eq!(
        listing,
        ["hello.qcow2", "hello.qcow2-console.log"],
        "output directory"
    );

    let hello = std::fs::read_to_string(template.join("files/hello.txt")).unwrap();
    let booted = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(boot_and_check(
            &output_dir.join("hello.qcow2"),
            "qcow2",
            "/hello.txt",
            &[
                &["systemctl", "is-active", "kiln-hello.service"],
                &["cat", "/srv/hello/hello.txt"],
            ],
        ));
    assert!(
        booted.http.starts_with("HTTP/1.1 200 OK\r\n"),
        "{communicator}: {}",
        booted.http
    );
    assert!(
        booted.http.ends_with(&hello),
        "{communicator}: {}",
        booted.http
    );
    assert_eq!(booted.outputs[0].trim(), "active", "kiln-hello.service");
    assert_eq!(booted.outputs[1], hello, "/srv/hello/hello.txt");
}

/// The README's main job: the real `file` and `shell` provisioners over SSH.
#[test]
fn qemu_hello_example_builds_an_image_that_serves_http() {
    if !vm_tests_enabled() {
        return;
    }
    build_and_check_hello("ssh");
}

/// The same template and provisioners through the QEMU guest agent.
#[test]
fn qemu_hello_example_builds_through_the_guest_agent() {
    if !vm_tests_enabled() {
        return;
    }
    build_and_check_hello("qga");
}

/// A shell provisioner that exits 1 fails `kiln build` with exit code 1, naming the provisioner
/// and where the template configures it; no QEMU process, runtime directory, output directory
/// or temporary file is left.
#[test]
fn a_failing_provisioner_fails_the_qemu_build_and_leaves_nothing() {
    if !vm_tests_enabled() {
        return;
    }
    let base = base_image(&repo());
    let k = Kiln::new();
    let tmp = k.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    k.write(
        "fails.pkr.hcl",
        r#"variable "base_image" {
  type = string
}

source "qemu" "fails" {
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = "none"
  ssh_username     = "kiln"
  ssh_timeout      = "10m"
  vm_name          = "fails-provisioner.qcow2"
  output_directory = "output/fails"
}

build {
  sources = ["source.qemu.fails"]

  provisioner "shell" {
    inline = ["echo about to fail", "exit 1"]
  }
}
"#,
    );
    let run = Run(k
        .cmd(&[
            "build",
            "-var",
            &format!("base_image={}", base.display()),
            "fails.pkr.hcl",
        ])
        .env("KILN_QEMU_ACCELERATOR", "tcg")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap());
    run.expect_code(1);
    let err = format!("{}{}", run.stdout(), run.stderr());
    assert!(
        err.contains("provisioner 1 (shell) at fails.pkr.hcl:18:3"),
        "{err}"
    );
    assert!(err.contains("exited with code 1"), "{err}");
    assert!(
        qemu_processes("fails-provisioner.qcow2").is_empty(),
        "QEMU left running"
    );
    assert!(!k.path("output/fails").exists(), "output directory left");
    assert_eq!(
        runtime_dirs(&tmp),
        Vec::<std::path::PathBuf>::new(),
        "runtime directory left"
    );
}

#[test]
fn qemu_installer_example_installs_through_bios_and_uefi() {
    if !vm_tests_enabled() {
        return;
    }
    let iso = installer_iso(&repo());
    let k = Kiln::new();
    let template = repo().join("templates/qemu-installer");
    for (efi, firmware) in [("false", "bios"), ("true", "efi")] {
        let run = k.run(&[
            "build",
            "-force",
            "-var",
            &format!("installer_iso={}", iso.display()),
            "-var",
            "accelerator=tcg",
            "-var",
            &format!("efi_boot={efi}"),
            template.to_str().unwrap(),
        ]);
        run.expect_code(0);
        let files = installed_files(&k.path("output/qemu-installer/installed.raw"));
        let want = |name: &str, text: &str| {
            assert_eq!(
                files.get(name).map(String::as_str),
                Some(text),
                "{firmware}: {name} in {files:?}"
            )
        };
        want("payload.txt", "installed by kiln over HTTP\n");
        want(
            "cd/answers.txt",
            &std::fs::read_to_string(template.join("files/answers.txt")).unwrap(),
        );
        want("cd/kiln/label.txt", "KILNCD\n");
        want("firmware", &format!("{firmware}\n"));
        let manifest: serde_json::Value =
            serde_json::from_str(&k.read("output/qemu-installer/manifest.json")).unwrap();
        let build = manifest["builds"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(build["builder_type"], "qemu", "{manifest}");
        let file = &build["files"][0];
        assert_eq!(
            file["name"], "output/qemu-installer/installed.raw",
            "{manifest}"
        );
        let size = std::fs::metadata(k.path("output/qemu-installer/installed.raw"))
            .unwrap()
            .len();
        assert_eq!(file["size"], size, "{manifest}");
        assert_eq!(file["sha256"].as_str().unwrap().len(), 64, "{manifest}");
    }
}
