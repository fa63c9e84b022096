//! vm-test of the README's main job: `kiln build` of `templates/qemu-hello` on the base disk of
//! `vm-tests/base-image.sh` under TCG (real `file` and `shell` provisioners over SSH, cloud-init
//! key and host-key injection), then the produced image booted in a fresh VM and checked from
//! the host (HTTP through `hostfwd`) and from inside (the guest agent). Runs with
//! `KILN_VM_TESTS=1`. And `templates/qemu-installer`: an ISO install typed through QMP, through
//! BIOS and UEFI, checked by reading the installed disk.

use kiln_testkit::vm::{
    base_image, boot_and_check, installed_files, installer_iso, vm_tests_enabled,
};

use crate::fixture::{repo, Kiln};

#[test]
fn qemu_hello_example_builds_an_image_that_serves_http() {
    if !vm_tests_enabled() {
        return;
    }
    let base = base_image(&repo());
    let k = Kiln::new();
    let template = repo().join("templates/qemu-hello");
    let run = k.run(&[
        "build",
        "-var",
        &format!("base_image={}", base.display()),
        "-var",
        "accelerator=tcg",
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
        "{}",
        booted.http
    );
    assert!(booted.http.ends_with(&hello), "{}", booted.http);
    assert_eq!(booted.outputs[0].trim(), "active", "kiln-hello.service");
    assert_eq!(booted.outputs[1], hello, "/srv/hello/hello.txt");
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
