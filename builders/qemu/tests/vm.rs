//! vm-tests of the qemu builder: real QEMU under TCG on the Debian base disk that
//! `vm-tests/base-image.sh` builds. They run only with `KILN_VM_TESTS=1` (`.ci/run` sets it) and
//! one at a time (one test function): the machine has two cores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use kiln_comm::{Communicator, RemoteCommand, UploadOptions, UploadSource};
use kiln_core::component::{ConnInfo, ProvisionHook, Registry};
use kiln_core::diag::{FileId, Span};
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::plan::{Config, ConfigAttr};
use kiln_core::runner::{error_chain, BuildCtx, BuildError, Cancel, OnError};
use kiln_testkit::vm::{
    base_image, boot_and_check, installed_files, installer_iso, vm_tests_enabled,
};
use serde_json::{json, Value};

const HELLO: &str = "hello from a kiln-built image\n";
const UNIT: &str = "[Unit]
Description=Kiln hello HTTP server
After=network.target

[Service]
ExecStart=/bin/busybox httpd -f -p 8080 -h /srv/hello

[Install]
WantedBy=multi-user.target
";

/// The repository root. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests; the compile-time
/// value can name another checkout when several share one target directory.
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

fn config(attrs: Value) -> Config {
    let Value::Object(map) = attrs else {
        panic!("attrs must be an object")
    };
    Config {
        kind: "qemu".into(),
        attrs: map
            .into_iter()
            .map(|(key, value)| ConfigAttr {
                key,
                value,
                span: Span::new(FileId(0), 0, 1),
            })
            .collect(),
        blocks: Vec::new(),
        span: Span::new(FileId(0), 0, 1),
    }
}

/// VM tests take turns: the machine has two cores.
static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A build context whose events are echoed to stderr (shown when a test fails) and handed to
/// `on_event`.
fn build_ctx_with(name: &str, on_event: impl Fn(&EventKind) + Send + 'static) -> BuildCtx {
    let (sink, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            on_event(&event.kind);
            match event.kind {
                EventKind::Message { text, .. } if text.starts_with("console: ") => {}
                kind => eprintln!("event: {kind:?}"),
            }
        }
    });
    BuildCtx {
        run_id: sink.run_id(),
        build_name: format!("qemu.{name}"),
        source_type: "qemu".into(),
        source_name: name.into(),
        events: sink,
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

fn build_ctx(name: &str) -> BuildCtx {
    build_ctx_with(name, |_| {})
}

async fn run(
    attrs: Value,
    name: &str,
    hook: &dyn ProvisionHook,
) -> Result<kiln_core::artifact::Artifact, BuildError> {
    run_in(attrs, &build_ctx(name), hook).await
}

async fn run_in(
    attrs: Value,
    ctx: &BuildCtx,
    hook: &dyn ProvisionHook,
) -> Result<kiln_core::artifact::Artifact, BuildError> {
    let mut registry = Registry::default();
    qemu::register(&mut registry);
    let builder = registry.builders["qemu"]
        .configure(&config(attrs))
        .expect("valid config");
    builder.run(ctx, hook).await
}

fn chain(err: &BuildError) -> String {
    error_chain(err).join(": ")
}

/// Installs the hello file and unit, as the `shell`/`file` provisioners of
/// `templates/qemu-hello` do.
struct InstallHello;

async fn sh(comm: &dyn Communicator, command: &str) -> Result<(), BuildError> {
    let mut out = |_: kiln_comm::Stream, line: &str| eprintln!("guest: {line}");
    let cmd = RemoteCommand {
        command: command.into(),
        ..RemoteCommand::default()
    };
    let status = comm
        .exec(&cmd, &mut out)
        .await
        .map_err(|e| BuildError::Provisioner {
            what: "provisioner 1 (shell)".into(),
            source: e.into(),
        })?;
    if !status.success() {
        return Err(BuildError::Provisioner {
            what: "provisioner 1 (shell)".into(),
            source: format!("script exited with {status:?}").into(),
        });
    }
    Ok(())
}

#[async_trait]
impl ProvisionHook for InstallHello {
    async fn provision(
        &self,
        _: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        assert_eq!(conn.conn_type, comm.kind());
        let upload = |bytes: &str, dest: &'static str| {
            let src = UploadSource::Bytes(bytes.as_bytes().to_vec());
            async move {
                comm.upload(src, dest, &UploadOptions::default())
                    .await
                    .map_err(|e| BuildError::Provisioner {
                        what: "provisioner 0 (file)".into(),
                        source: e.into(),
                    })
            }
        };
        upload(HELLO, "/tmp/hello.txt").await?;
        upload(UNIT, "/tmp/kiln-hello.service").await?;
        sh(
            comm,
            "set -e; sudo mkdir -p /srv/hello; sudo mv /tmp/hello.txt /srv/hello/hello.txt; \
             sudo mv /tmp/kiln-hello.service /etc/systemd/system/; \
             sudo systemctl enable kiln-hello.service",
        )
        .await
    }
}

/// A provisioner that exits 1.
struct Exit1;

#[async_trait]
impl ProvisionHook for Exit1 {
    async fn provision(
        &self,
        _: &BuildCtx,
        _: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        sh(comm, "echo failing on purpose; exit 1").await
    }
}

/// Fails the test if the hook is ever called.
struct Unreachable;

#[async_trait]
impl ProvisionHook for Unreachable {
    async fn provision(
        &self,
        _: &BuildCtx,
        _: &ConnInfo,
        _: &dyn Communicator,
    ) -> Result<(), BuildError> {
        panic!("the build must not get to provisioning")
    }
}

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

/// Runtime directories of qemu builds (any build on the machine: compare with a snapshot).
fn runtime_dirs() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kiln-qemu-"))
        })
        .collect()
}

/// Runtime directories that appeared since `before` (another build's may vanish meanwhile).
fn new_runtime_dirs(before: &[PathBuf]) -> Vec<PathBuf> {
    runtime_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect()
}

/// Checks that provisioners get the `none` communicator and `build.PackerHTTPAddr`.
struct NoCommunicator;

#[async_trait]
impl ProvisionHook for NoCommunicator {
    async fn provision(
        &self,
        _: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        assert_eq!((conn.conn_type.as_str(), comm.kind()), ("none", "none"));
        let addr = conn.http_addr.as_deref().expect("build.PackerHTTPAddr");
        assert!(addr.starts_with("10.0.2.2:"), "{addr}");
        Ok(())
    }
}

/// Checks that the hello file is on the machine.
struct HasHello;

#[async_trait]
impl ProvisionHook for HasHello {
    async fn provision(
        &self,
        _: &BuildCtx,
        _: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        sh(comm, "test -f /srv/hello/hello.txt").await
    }
}

/// Boots a built image in a fresh VM and asserts it serves the hello file over HTTP and, inside
/// (through the guest agent), runs the unit and holds the file.
async fn assert_hello(what: &str, image: &Path, format: &str) {
    let booted = boot_and_check(
        image,
        format,
        "/hello.txt",
        &[
            &["systemctl", "is-active", "kiln-hello.service"],
            &["cat", "/srv/hello/hello.txt"],
        ],
    )
    .await;
    assert!(
        booted.http.starts_with("HTTP/1.1 200 OK\r\n"),
        "{what}: {}",
        booted.http
    );
    assert!(booted.http.ends_with(HELLO), "{what}: {}", booted.http);
    assert_eq!(
        booted.outputs[0].trim(),
        "active",
        "{what}: kiln-hello.service"
    );
    assert_eq!(booted.outputs[1], HELLO, "{what}: /srv/hello/hello.txt");
}

/// A build's options on the base disk, its output under `work/NAME`.
fn attrs(base: &Path, work: &Path, name: &str, extra: Value) -> Value {
    let mut v = json!({
        "disk_image": true,
        "iso_url": base.display().to_string(),
        "iso_checksum": "none",
        "ssh_username": "kiln",
        "ssh_timeout": "10m",
        "vm_name": format!("{name}.qcow2"),
        "output_directory": work.join(name).display().to_string(),
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

/// `accelerator = "auto"` picks KVM when `/dev/kvm` opens; where KVM hangs guests (as on the
/// development machines) the build must fail within the stall limit saying to use `tcg`, never
/// hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_acceleration_builds_or_says_to_use_tcg() {
    if !vm_tests_enabled() {
        return;
    }
    let _turn = VM_LOCK.lock().await;
    std::env::set_var(qemu::ACCELERATOR_ENV, "auto");
    let base = base_image(&repo_root());
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = run(
        attrs(&base, work.path(), "auto", json!({})),
        "auto",
        &HasNoHello,
    )
    .await;
    eprintln!("auto build ended after {:?}", started.elapsed());
    if let Err(err) = result {
        let text = chain(&err);
        assert!(text.contains("set `accelerator = \"tcg\"`"), "{text}");
    }
    assert!(qemu_processes("auto.qcow2").is_empty(), "QEMU left running");
}

/// Provisions nothing; checks the machine answers.
struct HasNoHello;

#[async_trait]
impl ProvisionHook for HasNoHello {
    async fn provision(
        &self,
        _: &BuildCtx,
        _: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        sh(comm, "test ! -e /srv/hello/hello.txt").await
    }
}

/// QEMU refusing its arguments fails `launch vm` quoting QEMU's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_errors_are_quoted() {
    if !vm_tests_enabled() {
        return;
    }
    let _turn = VM_LOCK.lock().await;
    std::env::set_var(qemu::ACCELERATOR_ENV, "tcg");
    let base = base_image(&repo_root());
    let work = tempfile::tempdir().unwrap();
    let extra = json!({ "qemuargs": [["-no-such-flag"]] });
    let err = run(
        attrs(&base, work.path(), "badargs", extra),
        "badargs",
        &Unreachable,
    )
    .await
    .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("launch vm") && text.contains("QEMU exited"),
        "{text}"
    );
    assert!(text.contains("-no-such-flag"), "{text}");
    assert!(
        !work.path().join("badargs").exists(),
        "output directory left"
    );
}

/// An interrupt while the guest boots stops QEMU and removes everything the build made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_build_leaves_nothing() {
    if !vm_tests_enabled() {
        return;
    }
    let _turn = VM_LOCK.lock().await;
    std::env::set_var(qemu::ACCELERATOR_ENV, "tcg");
    let base = base_image(&repo_root());
    let work = tempfile::tempdir().unwrap();
    let dirs_before = runtime_dirs();
    let cancel = Cancel::new();
    let on_wait = cancel.clone();
    let mut ctx = build_ctx_with("interrupted", move |kind| {
        if matches!(kind, EventKind::StepStarted { step } if step == "wait for ssh") {
            on_wait.cancel.cancel();
        }
    });
    ctx.cancel = cancel;
    let err = run_in(
        attrs(&base, work.path(), "interrupted", json!({})),
        &ctx,
        &Unreachable,
    )
    .await
    .unwrap_err();
    assert!(err.is_cancelled(), "{}", chain(&err));
    assert!(
        qemu_processes("interrupted.qcow2").is_empty(),
        "QEMU left running"
    );
    assert!(
        !work.path().join("interrupted").exists(),
        "output directory left"
    );
    assert_eq!(
        new_runtime_dirs(&dirs_before),
        Vec::<PathBuf>::new(),
        "runtime directory left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_builds_under_tcg() {
    if !vm_tests_enabled() {
        return;
    }
    let _turn = VM_LOCK.lock().await;
    std::env::set_var(qemu::ACCELERATOR_ENV, "tcg");
    let base = base_image(&repo_root());
    let work = tempfile::tempdir().unwrap();
    let attrs = |name: &str, extra: Value| attrs(&base, work.path(), name, extra);
    let dirs_before = runtime_dirs();

    // A wrong checksum is refused before anything boots.
    let err = run(
        attrs(
            "badsum",
            json!({ "iso_checksum": format!("sha256:{}", "0".repeat(64)) }),
        ),
        "badsum",
        &Unreachable,
    )
    .await
    .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("verify source") && text.contains("expects"),
        "{text}"
    );
    assert!(!work.path().join("badsum").exists());
    assert!(qemu_processes("badsum.qcow2").is_empty());

    // A provisioner exiting 1 fails the build naming it; nothing is left behind.
    let started = Instant::now();
    let err = run(attrs("fails", json!({})), "fails", &Exit1)
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("provisioner 1 (shell)"), "{text}");
    eprintln!("failing build took {:?}", started.elapsed());
    assert!(
        qemu_processes("fails.qcow2").is_empty(),
        "QEMU left running"
    );
    assert!(!work.path().join("fails").exists(), "output directory left");
    assert_eq!(
        new_runtime_dirs(&dirs_before),
        Vec::<PathBuf>::new(),
        "runtime directory left"
    );

    // The hello image: built, then booted in a fresh VM that serves the file over HTTP.
    let started = Instant::now();
    let artifact = run(attrs("hello", json!({})), "hello", &InstallHello)
        .await
        .unwrap_or_else(|e| panic!("build failed: {}", chain(&e)));
    eprintln!("hello build took {:?}", started.elapsed());
    assert_eq!(artifact.builder_type, "qemu");
    let file = &artifact.files[0];
    assert_eq!(file.path, work.path().join("hello/hello.qcow2"));
    assert_eq!(file.size, std::fs::metadata(&file.path).unwrap().len());
    let listing: Vec<String> = std::fs::read_dir(work.path().join("hello"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        listing.iter().all(|n| !n.starts_with('.')),
        "temporary files left: {listing:?}"
    );
    assert!(
        qemu_processes("hello.qcow2").is_empty(),
        "QEMU left running"
    );
    assert_eq!(
        new_runtime_dirs(&dirs_before),
        Vec::<PathBuf>::new(),
        "runtime directory left"
    );

    let started = Instant::now();
    assert_hello("hello", &file.path, "qcow2").await;
    eprintln!("booting the built image took {:?}", started.elapsed());

    // On top of the hello image (checked by its digest): a qcow2 overlay and a raw image boot too.
    let hello = file.path.display().to_string();
    let on_hello = json!({ "iso_url": hello, "iso_checksum": format!("sha256:{}", file.sha256) });
    for (name, extra, format) in [
        ("overlay", json!({ "use_backing_file": true }), "qcow2"),
        (
            "raw",
            json!({ "format": "raw", "disk_discard": "unmap" }),
            "raw",
        ),
    ] {
        let mut extra = extra;
        extra
            .as_object_mut()
            .unwrap()
            .extend(on_hello.as_object().unwrap().clone());
        let artifact = run(attrs(name, extra), name, &HasHello)
            .await
            .unwrap_or_else(|e| panic!("{name} build failed: {}", chain(&e)));
        let path = &artifact.files[0].path;
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], format, "{info}");
        if name == "overlay" {
            assert_eq!(info["backing-filename"], hello.as_str(), "{info}");
        }
        assert_hello(name, path, format).await;
    }
}

/// The sha256 of a file, as hex.
fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// The files the installer wrote on the disk image `image`.
fn installed(
    image: &Path,
    format: &str,
    scratch: &Path,
) -> std::collections::BTreeMap<String, String> {
    if format == "raw" {
        return installed_files(image);
    }
    let raw = scratch.join("installed.raw");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img convert");
    installed_files(&raw)
}

/// The ISO install path: the installer ISO (`vm-tests/installer-iso.sh`) boots to a GRUB prompt
/// through BIOS and through UEFI (OVMF); Kiln waits for `grub>` on the serial console, types the
/// kernel command line through QMP input events (with the HTTP server's address substituted),
/// serves `payload.txt` (from `http_content`, then from `http_directory`), attaches the
/// `cd_files`/`cd_content` CD; the guest's installer writes what it got onto the blank disk and
/// powers off by itself (`communicator = "none"`). The test reads the installed disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iso_install_types_its_boot_command_and_gets_its_files() {
    if !vm_tests_enabled() {
        return;
    }
    let _turn = VM_LOCK.lock().await;
    std::env::set_var(qemu::ACCELERATOR_ENV, "tcg");
    let iso = installer_iso(&repo_root());
    let work = tempfile::tempdir().unwrap();
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("payload.txt"), "served from http_directory\n").unwrap();
    let answers = work.path().join("answers.txt");
    std::fs::write(&answers, "from cd_files\n").unwrap();
    let dirs_before = runtime_dirs();
    let boot = "linux /vmlinuz console=ttyS0 quiet kiln.url=http://{{ .HTTPIP }}:{{ .HTTPPort }} \
                kiln.cd=KILNCD; initrd /initrd.gz; boot<enter>";

    for (name, format, extra, payload, firmware) in [
        (
            "bios",
            "raw",
            json!({ "http_content": { "/payload.txt": "served from http_content\n" } }),
            "served from http_content\n",
            "bios",
        ),
        (
            "uefi",
            "qcow2",
            json!({ "efi_boot": true, "http_directory": www.display().to_string() }),
            "served from http_directory\n",
            "efi",
        ),
    ] {
        let mut attrs = json!({
            "iso_url": iso.display().to_string(),
            "iso_checksum": format!("sha256:{}", sha256_file(&iso)),
            "communicator": "none",
            "disk_size": "64M",
            "format": format,
            "memory": 512,
            "boot_wait_for": "grub>",
            "boot_command": [boot],
            "cd_files": [answers.display().to_string()],
            "cd_content": { "nested/note.txt": "from cd_content\n" },
            "cd_label": "KILNCD",
            "shutdown_timeout": "5m",
            "vm_name": format!("{name}.{format}"),
            "output_directory": work.path().join(name).display().to_string(),
        });
        attrs
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let port = std::sync::Arc::new(std::sync::Mutex::new(None::<u16>));
        let seen = port.clone();
        let ctx = build_ctx_with(name, move |kind| {
            if let EventKind::Message { text, .. } = kind {
                if let Some(rest) = text.strip_prefix("serving HTTP on 127.0.0.1:") {
                    let p = rest.split_whitespace().next().unwrap().parse().unwrap();
                    *seen.lock().unwrap() = Some(p);
                }
            }
        });
        let started = Instant::now();
        let artifact = run_in(attrs, &ctx, &NoCommunicator)
            .await
            .unwrap_or_else(|e| panic!("{name} install failed: {}", chain(&e)));
        eprintln!("{name} ISO install took {:?}", started.elapsed());
        let file = &artifact.files[0];
        assert_eq!(
            file.sha256,
            sha256_file(&file.path),
            "{name}: artifact digest"
        );
        let files = installed(&file.path, format, work.path());
        assert_eq!(
            files.get("payload.txt").map(String::as_str),
            Some(payload),
            "{name}: {files:?}"
        );
        assert_eq!(
            files.get("cd/answers.txt").map(String::as_str),
            Some("from cd_files\n"),
            "{name}: {files:?}"
        );
        assert_eq!(
            files.get("cd/nested/note.txt").map(String::as_str),
            Some("from cd_content\n"),
            "{name}: {files:?}"
        );
        assert_eq!(
            files.get("firmware").map(|s| s.trim()),
            Some(firmware),
            "{name}: {files:?}"
        );
        assert!(
            qemu_processes(&format!("{name}.{format}")).is_empty(),
            "QEMU left running"
        );
        let port = port
            .lock()
            .unwrap()
            .expect("the HTTP server's port was reported");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the HTTP server still listens on {port}"
        );
        assert_eq!(
            new_runtime_dirs(&dirs_before),
            Vec::<PathBuf>::new(),
            "runtime directory left"
        );
    }
}
