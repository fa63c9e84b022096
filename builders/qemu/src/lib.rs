//! The `qemu` builder: boots a base disk image under QEMU (an overlay on it, never a copy) or an
//! installer ISO with a blank disk, provisions it over SSH or the guest agent, powers it off and
//! writes the result with `qemu-img convert`.
//!
//! Steps, each cleaned up in reverse on failure or interrupt: verify source → output directory →
//! runtime directory → working disk → cloud-init seed → extra CD → firmware variables → HTTP
//! server → launch (paused, QMP, `cont`) → type boot command → wait for the communicator →
//! provision → shut down → convert and hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_comm::ssh::{SshCommunicator, SshKey};
use kiln_comm::{Communicator, RemoteCommand};
use kiln_core::artifact::{Artifact, ArtifactFile};
use kiln_core::component::{Builder, BuilderKind, ConnInfo, OptionSpec, ProvisionHook, Registry};
use kiln_core::diag::Diagnostics;
use kiln_core::event::Level;
use kiln_core::plan::Config;
use kiln_core::runner::{run_steps, BuildCtx, BuildError, CleanupCtx, Leftover, Step};
use kiln_core::sensitive::Sensitive;
use kiln_core::BoxError;
use qga::QgaCommunicator;

mod boot;
mod cd;
mod checksum;
mod config;
mod disk;
mod fetch;
mod http;
mod qga;
mod seed;
mod vm;

pub use config::{Accelerator, Firmware, Format, Settings, ACCELERATOR_ENV, OPTIONS};
use vm::{LaunchSpec, Vm};

/// The type name in templates.
pub const TYPE_NAME: &str = "qemu";

/// Under KVM chosen by `accelerator = "auto"`, a guest whose serial console stays silent this
/// long before it is reachable is declared stuck (KVM hangs guests on some hosts).
pub const KVM_STALL_LIMIT: Duration = Duration::from_secs(60);

/// How long QEMU gets to quit after QMP `quit` before its process group is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// Adds the `qemu` builder.
pub fn register(registry: &mut Registry) {
    registry.add_builder(Arc::new(QemuKind));
}

struct QemuKind;

impl BuilderKind for QemuKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics> {
        Ok(Box::new(QemuBuilder {
            settings: config::settings(config)?,
        }))
    }
}

struct QemuBuilder {
    settings: Settings,
}

/// What the steps share.
#[derive(Default)]
struct State {
    vm_name: String,
    source: PathBuf,
    source_format: String,
    output_dir: PathBuf,
    runtime: Option<tempfile::TempDir>,
    work_disk: PathBuf,
    seed: Option<PathBuf>,
    client_key: Option<SshKey>,
    /// The client key, written in the runtime directory so `-on-error=abort` can say how to log in.
    key_file: Option<PathBuf>,
    host_key: Option<SshKey>,
    accelerator: &'static str,
    ssh_port: u16,
    pid: Option<i32>,
    vm: Option<Vm>,
    comm: Option<Box<dyn Communicator>>,
    conn: ConnInfo,
    partial: Option<PathBuf>,
    output: Option<ArtifactFile>,
    /// The extra CD-ROM of `cd_files` / `cd_content`.
    cd: Option<PathBuf>,
    /// The build's copy of the UEFI variable store.
    efi_vars: Option<PathBuf>,
    http: Option<http::HttpServer>,
    /// The HTTP server's port, as the guest reaches it at [`http::GUEST_HOST_IP`].
    http_port: Option<u16>,
}

impl State {
    /// `build.PackerHTTPAddr`.
    fn http_addr(&self) -> Option<String> {
        self.http_port
            .map(|port| format!("{}:{port}", http::GUEST_HOST_IP))
    }
}

impl State {
    fn vm(&self) -> &Vm {
        self.vm.as_ref().expect("the launch step ran")
    }

    fn runtime_dir(&self) -> &Path {
        self.runtime.as_ref().expect("the runtime step ran").path()
    }
}

/// Why a step of the qemu builder failed (besides the errors of the modules it calls).
#[derive(Debug, thiserror::Error)]
enum QemuError {
    #[error("the output directory `{}` exists (use -force to replace it)", .0.display())]
    OutputExists(PathBuf),
    #[error("cannot {what} `{}`", path.display())]
    Fs {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free loopback port")]
    Port(#[source] std::io::Error),
    #[error("QEMU exited before the guest was reachable")]
    ExitedEarly(#[source] vm::VmError),
    #[error(
        "the guest made no progress for {}s under KVM (its serial console stayed silent); KVM hangs guests on some hosts: set `accelerator = \"tcg\"` (or KILN_QEMU_ACCELERATOR=tcg)",
        KVM_STALL_LIMIT.as_secs()
    )]
    KvmStall,
    #[error("`shutdown_command` failed")]
    ShutdownCommand(#[source] kiln_comm::CommError),
    #[error("the guest did not power off within {0:?}")]
    ShutdownTimeout(Duration),
    #[error(
        "no UEFI firmware at `{0}` (install Debian's `ovmf` package or set `efi_firmware_code`)"
    )]
    NoFirmware(String),
}

fn fs_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> QemuError + 'a {
    move |source| QemuError::Fs {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Finds the base disk among the URLs (downloading it into the cache if need be) and checks its
/// checksum before anything else happens.
struct VerifySource<'a>(&'a Settings);

#[async_trait]
impl Step<State> for VerifySource<'_> {
    fn name(&self) -> &str {
        "verify source"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let fetcher =
            fetch::Fetcher::new(fetch::cache_dir(), fetch::Retry::default(), &ctx.events)?;
        let path = fetcher.find(&self.0.urls, &self.0.checksum).await?;
        state.source_format = disk::detect_format(&path).await?;
        state.source = path;
        Ok(())
    }
}

/// Creates the output directory; removes it again when the build fails.
struct OutputDir<'a>(&'a Settings);

#[async_trait]
impl Step<State> for OutputDir<'_> {
    fn name(&self) -> &str {
        "create output directory"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let dir = self
            .0
            .output_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("output-{}", ctx.source_name)));
        if dir.exists() {
            if !ctx.force {
                return Err(QemuError::OutputExists(dir).into());
            }
            std::fs::remove_dir_all(&dir).map_err(fs_err("remove", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(fs_err("create", &dir))?;
        state.output_dir = dir;
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, cx: &CleanupCtx<'_>) -> Result<(), BoxError> {
        if cx.failed && state.output_dir.exists() {
            std::fs::remove_dir_all(&state.output_dir)
                .map_err(fs_err("remove", &state.output_dir))?;
        }
        Ok(())
    }

    fn leftovers(&self, state: &State) -> Vec<Leftover> {
        vec![Leftover {
            what: format!("output directory `{}`", state.output_dir.display()),
            how_to_reach: None,
        }]
    }
}

/// A private temporary directory for sockets and the seed.
struct RuntimeDir;

#[async_trait]
impl Step<State> for RuntimeDir {
    fn name(&self) -> &str {
        "create runtime directory"
    }

    async fn run(&self, state: &mut State, _: &BuildCtx) -> Result<(), BoxError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-qemu-")
            .tempdir()
            .map_err(fs_err("create", &std::env::temp_dir()))?;
        state.runtime = Some(dir);
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        if let Some(dir) = state.runtime.take() {
            let path = dir.path().to_owned();
            dir.close().map_err(fs_err("remove", &path))?;
        }
        Ok(())
    }

    fn leftovers(&self, state: &State) -> Vec<Leftover> {
        state
            .runtime
            .iter()
            .map(|dir| Leftover {
                what: format!("runtime directory `{}`", dir.path().display()),
                how_to_reach: None,
            })
            .collect()
    }
}

/// The working disk: a qcow2 overlay on the base disk (never a copy), or a blank qcow2 for an ISO
/// install.
struct CreateDisk<'a>(&'a Settings);

#[async_trait]
impl Step<State> for CreateDisk<'_> {
    fn name(&self) -> &str {
        "create disk"
    }

    async fn run(&self, state: &mut State, _: &BuildCtx) -> Result<(), BoxError> {
        let work = state
            .output_dir
            .join(format!(".{}.work.qcow2", state.vm_name));
        let work = std::path::absolute(&work).map_err(fs_err("resolve", &work))?;
        state.work_disk = work.clone();
        if self.0.disk_image {
            disk::create_overlay(
                &state.source,
                &state.source_format,
                &work,
                self.0.disk_size,
                &self.0.qemu_img_args.create,
            )
            .await?;
        } else {
            disk::create_blank(
                &work,
                self.0.disk_size.unwrap_or(config::DEFAULT_ISO_DISK_SIZE),
                &self.0.qemu_img_args.create,
            )
            .await?;
        }
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        remove_if_present(&state.work_disk)
    }
}

fn remove_if_present(path: &Path) -> Result<(), BoxError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fs_err("remove", path)(e).into()),
        _ => Ok(()),
    }
}

/// The cloud-init seed with the build's client key and the guest's host key.
struct CloudInitSeed<'a>(&'a Settings);

#[async_trait]
impl Step<State> for CloudInitSeed<'_> {
    fn name(&self) -> &str {
        "make cloud-init seed"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let ssh = self
            .0
            .ssh
            .as_ref()
            .expect("cloud-init seeds are made for ssh");
        let client = SshKey::generate_ed25519()?;
        let host = SshKey::generate_ed25519()?;
        let private = client.private_key_pem();
        ctx.events
            .add_secrets([private.clone(), host.private_key_pem()]);
        let iso = state.runtime_dir().join("seed.iso");
        let spec = seed::SeedSpec {
            instance_id: &format!("kiln-{}", ctx.run_id),
            hostname: &state.vm_name,
            user: ssh.ssh_username.as_deref().unwrap_or("root"),
            authorized_key: &client.authorized_keys_line(),
            host_private_key: &host.private_key_pem(),
            host_public_key: &host.authorized_keys_line(),
        };
        seed::make_iso(&spec, state.runtime_dir(), &iso).await?;
        state.key_file = Some(write_private_key(state.runtime_dir(), &private)?);
        state.seed = Some(iso);
        state.client_key = Some(client);
        state.host_key = Some(host);
        Ok(())
    }
}

/// Writes `pem` as `dir/id_ed25519`, readable by its owner only.
fn write_private_key(dir: &Path, pem: &str) -> Result<PathBuf, QemuError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("id_ed25519");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .map_err(fs_err("write", &path))?;
    Ok(path)
}

/// The extra CD-ROM of `cd_files` / `cd_content`, staged and written in the runtime directory
/// (removed with it).
struct MakeCd<'a>(&'a cd::CdSpec);

#[async_trait]
impl Step<State> for MakeCd<'_> {
    fn name(&self) -> &str {
        "make cd"
    }

    async fn run(&self, state: &mut State, _: &BuildCtx) -> Result<(), BoxError> {
        let staged = state.runtime_dir().join("cd");
        let spec = self.0.clone();
        let stage_dir = staged.clone();
        tokio::task::spawn_blocking(move || cd::stage(&spec, &stage_dir)).await??;
        let iso = state.runtime_dir().join("cd.iso");
        cd::genisoimage(&staged, &iso, self.0.label.as_deref()).await?;
        state.cd = Some(iso);
        Ok(())
    }
}

/// Debian's OVMF (package `ovmf`): the 4 MiB build first, then the 2 MiB one.
const OVMF_CODE: [&str; 2] = [
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
];

/// Finds the UEFI firmware and copies its variable store for this build.
struct PrepareFirmware<'a>(&'a Settings);

#[async_trait]
impl Step<State> for PrepareFirmware<'_> {
    fn name(&self) -> &str {
        "prepare uefi firmware"
    }

    async fn run(&self, state: &mut State, _: &BuildCtx) -> Result<(), BoxError> {
        let Firmware::Efi {
            code,
            vars,
            drop_vars,
        } = &self.0.firmware
        else {
            return Ok(());
        };
        let code = efi_code(code.as_deref())?;
        if *drop_vars {
            return Ok(());
        }
        let template = match vars {
            Some(v) => v.clone(),
            None => {
                let name = code
                    .file_name()
                    .map(|n| n.to_string_lossy().replace("CODE", "VARS"))
                    .unwrap_or_default();
                code.with_file_name(name)
            }
        };
        let copy = state.runtime_dir().join("efivars.fd");
        std::fs::copy(&template, &copy)
            .map_err(fs_err("copy the UEFI variable store", &template))?;
        state.efi_vars = Some(copy);
        Ok(())
    }
}

/// The UEFI code image: the one configured, else Debian's.
fn efi_code(configured: Option<&Path>) -> Result<PathBuf, QemuError> {
    match configured {
        Some(path) if path.is_file() => Ok(path.to_owned()),
        Some(path) => Err(QemuError::NoFirmware(path.display().to_string())),
        None => OVMF_CODE
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| QemuError::NoFirmware(OVMF_CODE.join("` or `"))),
    }
}

/// The HTTP server of `http_directory` / `http_content`.
struct ServeHttp<'a>(&'a http::HttpSpec);

#[async_trait]
impl Step<State> for ServeHttp<'_> {
    fn name(&self) -> &str {
        "start http server"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let server = http::HttpServer::start(self.0, &ctx.events).await?;
        state.http_port = Some(server.addr.port());
        ctx.events.message(
            Level::Info,
            format!(
                "serving HTTP on {} (the guest's http://{}:{}/)",
                server.addr,
                http::GUEST_HOST_IP,
                server.addr.port()
            ),
        );
        state.http = Some(server);
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        if let Some(server) = state.http.take() {
            server.stop().await;
        }
        Ok(())
    }

    fn leftovers(&self, state: &State) -> Vec<Leftover> {
        state
            .http
            .iter()
            .map(|s| Leftover {
                what: format!("HTTP server on {} (inside this Kiln process)", s.addr),
                how_to_reach: None,
            })
            .collect()
    }
}

/// Types `boot_command` after `boot_wait_for` / `boot_wait`, racing QEMU's exit.
struct TypeBootCommand<'a>(&'a Settings);

#[async_trait]
impl Step<State> for TypeBootCommand<'_> {
    fn name(&self) -> &str {
        "type boot command"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let vm = state.vm();
        let boot = &self.0.boot;
        let vars = boot::Vars {
            http_ip: state.http_port.map(|_| http::GUEST_HOST_IP.to_string()),
            http_port: state.http_port,
            name: state.vm_name.clone(),
        };
        let typing = async {
            if let Some(text) = &boot.wait_for {
                ctx.events
                    .waiting(format!("`{text}` on the serial console"), None);
                vm.wait_console(text).await;
            }
            if !boot.wait.is_zero() {
                ctx.events
                    .waiting(format!("boot_wait ({:?})", boot.wait), Some(boot.wait));
                tokio::time::sleep(boot.wait).await;
            }
            for line in &boot.command {
                let line = boot::substitute(line, &vars)?;
                ctx.events
                    .message(Level::Debug, format!("boot command: {line}"));
                let (actions, skipped) = boot::parse(&line);
                if !skipped.is_empty() {
                    ctx.events.message(
                        Level::Warn,
                        format!(
                            "boot command: no key for {:?} on a US keyboard; not typed",
                            skipped
                        ),
                    );
                }
                for action in actions {
                    match action {
                        boot::Action::Press(keys) => vm.press(&keys).await?,
                        boot::Action::Down(key) => vm.key(key, true).await?,
                        boot::Action::Up(key) => vm.key(key, false).await?,
                        boot::Action::Wait(d) => {
                            tokio::time::sleep(d).await;
                            continue;
                        }
                    }
                    tokio::time::sleep(boot.key_interval).await;
                }
            }
            Ok::<_, BoxError>(())
        };
        tokio::select! {
            r = typing => r,
            status = vm.wait_exit() => {
                Err(QemuError::ExitedEarly(vm.exit_error(status)).into())
            }
        }
    }
}

/// Chooses the accelerator `auto` stands for: KVM when `/dev/kvm` can be opened.
fn resolve_accelerator(accelerator: Accelerator) -> &'static str {
    match accelerator {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg",
        Accelerator::None => "none",
        Accelerator::Auto => {
            let usable = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            if usable {
                "kvm"
            } else {
                "tcg"
            }
        }
    }
}

/// Kiln's QEMU arguments, as `[flag, value...]` groups; a flag in `qemuargs` replaces every
/// default group with the same flag, other `qemuargs` groups are appended.
fn qemu_args(settings: &Settings, state: &State) -> Vec<String> {
    let g = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut drive = format!(
        "file={},if={},cache={},discard={},detect-zeroes={},format=qcow2",
        state.work_disk.display(),
        settings.disk_interface,
        settings.disk_cache,
        settings.disk_discard,
        settings.disk_detect_zeroes,
    );
    if settings.disk_interface == "virtio-scsi" {
        drive = drive.replace("if=virtio-scsi", "if=none,id=kiln-disk");
    }
    let mut groups = vec![
        g(&["-nodefaults"]),
        g(&["-name", &state.vm_name]),
        g(&["-machine", &settings.machine_type]),
        g(&["-smp", &settings.cpus.to_string()]),
        g(&["-m", &format!("{}M", settings.memory)]),
        g(&["-display", "none"]),
        g(&["-drive", &drive]),
        g(&[
            "-netdev",
            &format!(
                "user,id=kiln-net,hostfwd=tcp:127.0.0.1:{}-:22",
                state.ssh_port
            ),
        ]),
        g(&[
            "-device",
            &format!("{},netdev=kiln-net", settings.net_device),
        ]),
    ];
    if settings.disk_interface == "virtio-scsi" {
        groups.push(g(&["-device", "virtio-scsi-pci,id=kiln-scsi"]));
        groups.push(g(&["-device", "scsi-hd,bus=kiln-scsi.0,drive=kiln-disk"]));
    }
    if state.accelerator != "none" {
        groups.push(g(&["-accel", state.accelerator]));
    }
    // CD-ROMs in this order: the installer ISO (booted once, so a reboot starts the installed
    // disk), the user's CD, the cloud-init seed.
    let cdrom = |path: &Path| format!("file={},media=cdrom,readonly=on,format=raw", path.display());
    if !settings.disk_image {
        groups.push(g(&["-drive", &cdrom(&state.source)]));
        groups.push(g(&["-boot", "once=d"]));
    }
    if let Some(cd) = &state.cd {
        groups.push(g(&["-drive", &cdrom(cd)]));
    }
    if let Some(seed) = &state.seed {
        groups.push(g(&["-drive", &cdrom(seed)]));
    }
    match &settings.firmware {
        Firmware::Default => {}
        Firmware::Bios(path) => groups.push(g(&["-bios", &path.display().to_string()])),
        Firmware::Efi { code, .. } => {
            // PrepareFirmware checked that it exists.
            let code = efi_code(code.as_deref()).unwrap_or_default();
            groups.push(g(&[
                "-drive",
                &format!(
                    "if=pflash,unit=0,format=raw,readonly=on,file={}",
                    code.display()
                ),
            ]));
            if let Some(vars) = &state.efi_vars {
                groups.push(g(&[
                    "-drive",
                    &format!("if=pflash,unit=1,format=raw,file={}", vars.display()),
                ]));
            }
        }
    }
    for user in &settings.qemuargs {
        if let Some(flag) = user.first() {
            groups.retain(|d| d.first() != Some(flag));
        }
    }
    groups.extend(settings.qemuargs.iter().cloned());
    groups.concat()
}

/// Starts QEMU paused with QMP, then continues it.
struct Launch<'a>(&'a Settings);

#[async_trait]
impl Step<State> for Launch<'_> {
    fn name(&self) -> &str {
        "launch vm"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        state.accelerator = resolve_accelerator(self.0.accelerator);
        state.ssh_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(QemuError::Port)?
            .port();
        let spec = LaunchSpec {
            program: self.0.qemu_binary.clone(),
            args: qemu_args(self.0, state),
            runtime_dir: state.runtime_dir().to_owned(),
            console_log: state
                .output_dir
                .join(format!("{}-console.log", state.vm_name)),
            guest_agent: self.0.guest_agent,
        };
        let ssh = match self.0.ssh {
            Some(_) => format!(", SSH forwarded from 127.0.0.1:{}", state.ssh_port),
            None => String::new(),
        };
        ctx.events.message(
            Level::Info,
            format!("starting QEMU ({} accelerator){ssh}", state.accelerator),
        );
        let pid = &mut state.pid;
        let (vm, mut console) = Vm::launch(&spec, |p| *pid = Some(p)).await?;
        state.vm = Some(vm);
        let events = ctx.events.clone();
        tokio::spawn(async move {
            while let Some(line) = console.recv().await {
                events.message(Level::Debug, format!("console: {line}"));
            }
        });
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, cx: &CleanupCtx<'_>) -> Result<(), BoxError> {
        match (&state.vm, state.pid) {
            // A hurried build (second Ctrl-C) does not wait for QEMU to quit.
            (Some(vm), _) => tokio::select! {
                _ = vm.stop(QUIT_GRACE) => {}
                _ = cx.build.cancel.hurry.cancelled() => {
                    vm::kill_group(vm.pid);
                    vm.wait_exit().await;
                }
            },
            (None, Some(pid)) => vm::kill_group(pid),
            (None, None) => {}
        }
        state.comm = None;
        Ok(())
    }

    fn leftovers(&self, state: &State) -> Vec<Leftover> {
        let Some(pid) = state.pid else {
            return Vec::new();
        };
        let user = self
            .0
            .ssh
            .as_ref()
            .and_then(|s| s.ssh_username.clone())
            .unwrap_or_else(|| "root".into());
        let qmp = state
            .vm
            .as_ref()
            .map(|vm| format!("; QMP socket {}", vm.qmp_socket.display()))
            .unwrap_or_default();
        let key = state
            .key_file
            .as_ref()
            .map(|k| format!(" -i {}", k.display()))
            .unwrap_or_default();
        vec![Leftover {
            what: format!("QEMU process group {pid}"),
            how_to_reach: Some(format!(
                "ssh{key} -p {} {user}@127.0.0.1{qmp}",
                state.ssh_port
            )),
        }]
    }
}

/// Waits for an SSH login (banner, host key, authentication) or the guest agent, racing QEMU's
/// exit.
struct WaitReady<'a>(&'a Settings);

#[async_trait]
impl Step<State> for WaitReady<'_> {
    fn name(&self) -> &str {
        if self.0.guest_agent {
            "wait for guest agent"
        } else {
            "wait for ssh"
        }
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        if self.0.guest_agent {
            return wait_for_agent(self.0, state, ctx).await;
        }
        let Some(base) = &self.0.ssh else {
            return Ok(());
        };
        let mut ssh = base.clone();
        ssh.ssh_host = Some("127.0.0.1".into());
        ssh.ssh_port = state.ssh_port;
        ssh.ephemeral_key = state.client_key.clone();
        ssh.known_host_key = state.host_key.as_ref().map(|k| k.public_key().clone());
        ctx.events
            .waiting("the guest's SSH login", Some(ssh.ssh_timeout));
        let vm = state.vm();
        let watch_kvm = self.0.accelerator == Accelerator::Auto && state.accelerator == "kvm";
        let comm = tokio::select! {
            comm = SshCommunicator::connect(&ssh) => comm?,
            status = vm.wait_exit() => {
                return Err(QemuError::ExitedEarly(vm.exit_error(status)).into())
            }
            _ = stalled(vm, watch_kvm) => return Err(QemuError::KvmStall.into()),
        };
        state.conn = ConnInfo {
            id: Some(state.vm_name.clone()),
            conn_type: "ssh".into(),
            host: Some("127.0.0.1".into()),
            port: Some(state.ssh_port),
            user: ssh.ssh_username.clone(),
            password: ssh
                .ssh_password
                .as_ref()
                .map(|p| Sensitive::new(p.expose().to_string())),
            ssh_public_key: state.client_key.as_ref().map(|k| k.authorized_keys_line()),
            ssh_private_key: state
                .client_key
                .as_ref()
                .map(|k| Sensitive::new(k.private_key_pem())),
            ssh_private_key_file: state
                .key_file
                .clone()
                .or_else(|| ssh.ssh_private_key_file.clone()),
            ssh_host_key: state.host_key.as_ref().map(|k| {
                let line = k.authorized_keys_line();
                line.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            http_addr: state.http_addr(),
            ssh_bastion: ssh.bastion_address(),
        };
        state.comm = Some(Box::new(comm));
        Ok(())
    }
}

/// Waits for the guest's agent to open its port (QMP `VSERPORT_CHANGE`), then connects.
async fn wait_for_agent(
    settings: &Settings,
    state: &mut State,
    ctx: &BuildCtx,
) -> Result<(), BoxError> {
    ctx.events.waiting("the guest agent", None);
    let vm = state.vm();
    let watch_kvm = settings.accelerator == Accelerator::Auto && state.accelerator == "kvm";
    let mut open = vm.agent_open.clone();
    tokio::select! {
        r = open.wait_for(|open| *open) => { r?; }
        status = vm.wait_exit() => {
            return Err(QemuError::ExitedEarly(vm.exit_error(status)).into())
        }
        _ = stalled(vm, watch_kvm) => return Err(QemuError::KvmStall.into()),
    }
    let socket = vm
        .take_agent_socket()
        .expect("the agent socket is taken once");
    let comm = QgaCommunicator::connect(socket).await?;
    state.conn = ConnInfo {
        id: Some(state.vm_name.clone()),
        conn_type: "qga".into(),
        http_addr: state.http_addr(),
        ..ConnInfo::default()
    };
    state.comm = Some(Box::new(comm));
    Ok(())
}

/// Resolves when `watch` is set and the console has been silent for [`KVM_STALL_LIMIT`].
async fn stalled(vm: &Vm, watch: bool) {
    if !watch {
        return std::future::pending().await;
    }
    let mut activity = vm.console_activity.clone();
    loop {
        let last = *activity.borrow_and_update();
        let quiet = tokio::time::sleep_until((last + KVM_STALL_LIMIT).into());
        tokio::select! {
            _ = quiet => return,
            _ = activity.changed() => {}
        }
    }
}

/// Runs the build's provisioners through the runner's hook.
struct Provision<'a> {
    hook: &'a dyn ProvisionHook,
}

#[async_trait]
impl Step<State> for Provision<'_> {
    fn name(&self) -> &str {
        "provision"
    }

    /// The hook returns soon after a cancellation, once the provisioner has stopped its work.
    fn stops_on_cancel(&self) -> bool {
        true
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        match &state.comm {
            Some(comm) => self.hook.provision(ctx, &state.conn, comm.as_ref()).await?,
            None => {
                let none = kiln_comm::NoneCommunicator;
                let conn = ConnInfo {
                    id: Some(state.vm_name.clone()),
                    conn_type: "none".into(),
                    http_addr: state.http_addr(),
                    ..ConnInfo::default()
                };
                self.hook.provision(ctx, &conn, &none).await?
            }
        }
        Ok(())
    }
}

/// Powers the guest off and waits for QEMU to exit.
struct Shutdown<'a>(&'a Settings);

#[async_trait]
impl Step<State> for Shutdown<'_> {
    fn name(&self) -> &str {
        "shut down"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        if let (Some(comm), "unmap") = (&state.comm, self.0.disk_discard.as_str()) {
            trim(comm.as_ref(), ctx).await;
        }
        match (&self.0.shutdown_command, &state.comm) {
            (Some(command), Some(comm)) => {
                let cmd = RemoteCommand {
                    command: command.clone(),
                    ..RemoteCommand::default()
                };
                let events = ctx.events.clone();
                let mut out = move |_: kiln_comm::Stream, line: &str| {
                    events.message(Level::Info, format!("shutdown: {line}"))
                };
                // The connection may drop as the guest goes down; only a refusal to run counts.
                match comm.exec(&cmd, &mut out).await {
                    Ok(_) | Err(kiln_comm::CommError::Disconnected) => {}
                    Err(e) => return Err(QemuError::ShutdownCommand(e).into()),
                }
            }
            (None, Some(_)) => state.vm().powerdown().await?,
            // `communicator = "none"`: the guest powers off by itself (an installer's last
            // step), as in Packer; Kiln only waits.
            (_, None) => {}
        }
        let waiting = if state.comm.is_some() {
            "the guest to power off"
        } else {
            "the guest to power off by itself"
        };
        ctx.events.waiting(waiting, Some(self.0.shutdown_timeout));
        // The communicator stays connected until QEMU is gone: a guest agent whose client
        // disconnects spins and slows the power-off down.
        let vm = state.vm();
        let powered_off = tokio::time::timeout(self.0.shutdown_timeout, vm.wait_exit()).await;
        if powered_off.is_err() {
            vm.stop(QUIT_GRACE).await;
        }
        state.comm = None;
        powered_off.map_err(|_| QemuError::ShutdownTimeout(self.0.shutdown_timeout))?;
        Ok(())
    }
}

/// Trims the guest's free space so the convert leaves it out (`disk_discard = "unmap"`); a
/// failure only warns: the image is still correct, just larger.
async fn trim(comm: &dyn Communicator, ctx: &BuildCtx) {
    let cmd = RemoteCommand {
        command: "fstrim -a 2>/dev/null || sudo -n fstrim -a".into(),
        ..RemoteCommand::default()
    };
    let mut out = |_: kiln_comm::Stream, _: &str| {};
    match comm.exec(&cmd, &mut out).await {
        Ok(status) if status.success() => {}
        Ok(status) => ctx.events.message(
            Level::Warn,
            format!("`fstrim -a` ended with {status:?}; free space was not trimmed"),
        ),
        Err(e) => ctx.events.message(
            Level::Warn,
            format!(
                "cannot trim free space: {}",
                kiln_core::runner::error_chain(&e).join(": ")
            ),
        ),
    }
}

/// Writes the output under a temporary name, hashes it, then gives it its final name.
struct Convert<'a>(&'a Settings);

#[async_trait]
impl Step<State> for Convert<'_> {
    fn name(&self) -> &str {
        "convert disk"
    }

    async fn run(&self, state: &mut State, _: &BuildCtx) -> Result<(), BoxError> {
        let output = state.output_dir.join(&state.vm_name);
        let partial = state.output_dir.join(format!(".{}.partial", state.vm_name));
        state.partial = Some(partial.clone());
        if self.0.use_backing_file {
            std::fs::rename(&state.work_disk, &partial).map_err(fs_err("rename", &partial))?;
        } else {
            disk::convert(
                &state.work_disk,
                &partial,
                self.0.format.as_str(),
                self.0.compress,
                &self.0.qemu_img_args.convert,
            )
            .await?;
            remove_if_present(&state.work_disk)?;
        }
        let (size, sha256) = disk::size_and_sha256(partial.clone())
            .await
            .map_err(fs_err("hash", &partial))?;
        std::fs::rename(&partial, &output).map_err(fs_err("rename", &output))?;
        state.partial = None;
        state.output = Some(ArtifactFile {
            path: output,
            size,
            sha256,
        });
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        match &state.partial {
            Some(partial) => remove_if_present(partial),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Builder for QemuBuilder {
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        let s = &self.settings;
        let mut state = State {
            vm_name: s
                .vm_name
                .clone()
                .unwrap_or_else(|| format!("kiln-{}", ctx.source_name)),
            ..State::default()
        };
        let verify = VerifySource(s);
        let output_dir = OutputDir(s);
        let disk = CreateDisk(s);
        let seed = CloudInitSeed(s);
        let launch = Launch(s);
        let ready = WaitReady(s);
        let provision = Provision { hook };
        let shutdown = Shutdown(s);
        let convert = Convert(s);
        let cd = s.cd.as_ref().map(MakeCd);
        let firmware = PrepareFirmware(s);
        let http = s.http.as_ref().map(ServeHttp);
        let boot = TypeBootCommand(s);
        let mut steps: Vec<&dyn Step<State>> = vec![&verify, &output_dir, &RuntimeDir, &disk];
        if s.cloud_init && s.ssh.is_some() {
            steps.push(&seed);
        }
        if let Some(cd) = &cd {
            steps.push(cd);
        }
        if matches!(s.firmware, Firmware::Efi { .. }) {
            steps.push(&firmware);
        }
        if let Some(http) = &http {
            steps.push(http);
        }
        steps.push(&launch);
        if !s.boot.command.is_empty() {
            steps.push(&boot);
        }
        if s.ssh.is_some() || s.guest_agent {
            steps.push(&ready);
        }
        steps.extend([&provision as &dyn Step<State>, &shutdown, &convert]);
        run_steps(&steps, &mut state, ctx).await?;
        let file = state.output.take().expect("the convert step ran");
        let mut data = serde_json::Map::new();
        data.insert("format".into(), s.format.as_str().into());
        data.insert("accelerator".into(), state.accelerator.into());
        if s.use_backing_file {
            data.insert(
                "backing_file".into(),
                state.source.display().to_string().into(),
            );
        }
        Ok(Artifact {
            builder_type: TYPE_NAME.to_string(),
            id: state.vm_name.clone(),
            files: vec![file],
            data,
        })
    }
}

#[cfg(test)]
mod tests;
