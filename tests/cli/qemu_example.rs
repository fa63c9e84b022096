//! vm-test of the README's main job: `kiln build` of `templates/qemu-hello` on the base disk of
//! `vm-tests/base-image.sh` under TCG (real `file` and `shell` provisioners over SSH, cloud-init
//! key and host-key injection), then the produced image booted in a fresh VM and checked from
//! the host (HTTP through `hostfwd`) and from inside (the guest agent). Runs with
//! `KILN_VM_TESTS=1`.

use kiln_testkit::vm::{base_image, boot_and_check, vm_tests_enabled};

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
