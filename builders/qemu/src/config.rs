//! The qemu builder's options as written in templates (Packer's names), their checks, and the
//! resolved [`Settings`] the steps work from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_comm::ssh::{parse_go_duration, SshConfig};
use kiln_core::component::OptionSpec;
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use serde::Deserialize;

use crate::boot;
use crate::cd::CdSpec;
use crate::checksum::Checksum;
use crate::http::HttpSpec;

/// Environment variable that overrides `accelerator` (CI forces `tcg`).
pub const ACCELERATOR_ENV: &str = "KILN_QEMU_ACCELERATOR";

const fn opt(name: &'static str, ty: &'static str, doc: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        ty,
        required: false,
        doc,
    }
}

pub const OPTIONS: &[OptionSpec] = &[
    opt("iso_url", "string", "The base disk (with `disk_image = true`): a local path, a `file://` URL (used in place), or an `http://`/`https://` URL (downloaded into the cache under `KILN_CACHE_DIR`)."),
    opt("iso_urls", "list(string)", "Places to look for the base disk, tried in order (after `iso_url`); the error names each one with its last failure."),
    opt("iso_checksum", "string", "`sha256:HEX`, `sha512:HEX`, bare hex, `file:PATH` or `file:URL` (`file://`, `http(s)://`) of a SUMS file listing the source by file name, or `none`; keys the download cache."),
    opt("disk_image", "bool", "`true`: the source is a bootable disk image the VM runs on (through an overlay). `false` (default, as Packer): the source is an installer ISO, attached as a CD-ROM and booted once, with a blank disk of `disk_size`."),
    opt("use_backing_file", "bool", "Output a qcow2 overlay backed by the base disk instead of a standalone image."),
    opt("disk_size", "string", "Grow the disk to this size (`10G`, `512M`, or a number of MiB); the blank disk of an ISO install defaults to `40960M`."),
    opt("boot_command", "list(string)", "Keys typed into the guest through QMP input events after `boot_wait` / `boot_wait_for`, in Packer's notation: text, `<enter>`, `<esc>`, `<tab>`, `<f1>`...`<f12>`, `<leftCtrlOn>`/`<leftCtrlOff>`..., `<wait>`, `<wait5>`, `<wait1m30s>`; `{{ .HTTPIP }}`, `{{ .HTTPPort }}`, `{{ .Name }}` are replaced."),
    opt("boot_wait", "duration", "Fixed wait before typing `boot_command` (default `10s`, as Packer; `0s` when `boot_wait_for` is set). Not used without a `boot_command`."),
    opt("boot_wait_for", "string", "Kiln extension: start typing `boot_command` as soon as the serial console has printed this text (e.g. `grub>`), instead of a fixed wait."),
    opt("boot_key_interval", "duration", "Pause after each key of `boot_command` (default `10ms`)."),
    opt("http_directory", "string", "Serve this directory over HTTP to the guest, at `http://{{ .HTTPIP }}:{{ .HTTPPort }}/` (`10.0.2.2` under user-mode networking); conflicts with `http_content`."),
    opt("http_content", "map(string)", "Serve these contents over HTTP: URL path (`/preseed.cfg`) → content; conflicts with `http_directory`."),
    opt("http_bind_address", "string", "Address the HTTP server listens on (default `127.0.0.1`; the guest reaches it as `10.0.2.2`)."),
    opt("http_port_min", "number", "Lowest port the HTTP server may take (default: any free port)."),
    opt("http_port_max", "number", "Highest port the HTTP server may take (default `http_port_min`, or any free port)."),
    opt("cd_files", "list(string)", "Files and directories (globs allowed) put on an extra CD-ROM: a file or a directory named with a trailing `/` lands at the CD's root (a directory's contents), a directory without one lands as that directory."),
    opt("cd_content", "map(string)", "Files written on the extra CD-ROM: path on the CD → content."),
    opt("cd_label", "string", "Volume label of the extra CD-ROM (e.g. `cidata` for a cloud-init seed of your own)."),
    opt("firmware", "string", "A BIOS image for QEMU's `-bios` (default: QEMU's SeaBIOS); conflicts with `efi_boot`."),
    opt("efi_boot", "bool", "Boot through UEFI (OVMF): the firmware code read-only and a private copy of its variable store as pflash drives."),
    opt("efi_firmware_code", "string", "OVMF code image (default `/usr/share/OVMF/OVMF_CODE_4M.fd`, else `/usr/share/OVMF/OVMF_CODE.fd`: Debian's `ovmf`)."),
    opt("efi_firmware_vars", "string", "OVMF variable store template, copied for each build (default the `OVMF_VARS` file beside the code)."),
    opt("efi_drop_efivars", "bool", "Attach no variable store (the firmware code only)."),
    opt("format", "string", "Output format: `qcow2` (default) or `raw`."),
    opt("qemu_binary", "string", "The QEMU program (default `qemu-system-x86_64`)."),
    opt("qemuargs", "list(list(string))", "Extra QEMU arguments; a flag given here replaces Kiln's default for the same flag."),
    opt("machine_type", "string", "QEMU machine type (default `pc`)."),
    opt("accelerator", "string", "`auto` (default: KVM when usable, else TCG), `kvm`, `tcg` or `none`; env `KILN_QEMU_ACCELERATOR` overrides it."),
    opt("cpus", "number", "Virtual CPUs (default 1)."),
    opt("memory", "number", "Memory in MiB (default 1024)."),
    opt("net_device", "string", "QEMU NIC model (default `virtio-net`)."),
    opt("disk_interface", "string", "QEMU drive interface (default `virtio`)."),
    opt("disk_cache", "string", "QEMU drive cache mode (default `writeback`)."),
    opt("disk_discard", "string", "`ignore` (default) or `unmap` (the guest may discard blocks; Kiln runs `fstrim -a` before shutdown)."),
    opt("disk_detect_zeroes", "string", "`off` (default), `on` or `unmap`."),
    opt("vm_name", "string", "VM name and output file name (default `kiln-SOURCE_NAME`)."),
    opt("output_directory", "string", "Where the image is written (default `output-SOURCE_NAME`); must not exist unless `-force`."),
    opt("headless", "bool", "No display window (default `true`; Kiln never opens one)."),
    opt("communicator", "string", "`ssh` (default), `qga` (the QEMU guest agent over virtio-serial) or `none`."),
    opt("cloud_init", "bool", "Attach a NoCloud seed that creates `ssh_username` with the build's key and installs a host key Kiln generated (default `true` with `disk_image = true`, else `false`)."),
    opt("shutdown_command", "string", "Command that powers the machine off; ACPI power-down through QMP when unset. With `communicator = \"none\"` Kiln sends nothing and waits for the guest to power off by itself (as Packer)."),
    opt("shutdown_timeout", "duration", "How long to wait for the machine to power off (default `5m`)."),
    opt("skip_compaction", "bool", "Do not compress the output even when `disk_compression` is set."),
    opt("disk_compression", "bool", "Compress the qcow2 output (zstd)."),
    opt("qemu_img_args", "block(object({convert = list(string), create = list(string)}))", "Extra `qemu-img` arguments: `convert = [...]`, `create = [...]`."),
    opt("ssh_username", "string", "User to log in as (created by cloud-init)."),
    opt("ssh_password", "string", "Password for `ssh_username`."),
    opt("ssh_private_key_file", "string", "Private key for `ssh_username`, besides the build's own key."),
    opt("ssh_pty", "bool", "Run commands in a pseudo-terminal."),
    opt("ssh_timeout", "duration", "How long to wait for the guest's SSH login (default `5m`)."),
    opt("ssh_keep_alive_interval", "duration", "Interval of SSH keep-alives (default `5s`)."),
    opt("ssh_handshake_attempts", "number", "Rejected logins tolerated while the guest boots (default 10)."),
    opt("ssh_host_key_fingerprint", "string", "Expected host key fingerprint when `cloud_init = false`."),
];

/// `qemu_img_args { ... }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct QemuImgArgs {
    pub convert: Vec<String>,
    pub create: Vec<String>,
}

/// The options as written (see `docs/builders/qemu.md`).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Options {
    iso_url: Option<String>,
    iso_urls: Vec<String>,
    iso_checksum: Option<String>,
    disk_image: bool,
    use_backing_file: bool,
    disk_size: Option<serde_json::Value>,
    format: String,
    qemu_binary: String,
    qemuargs: Vec<Vec<String>>,
    machine_type: String,
    accelerator: String,
    cpus: u32,
    memory: u32,
    net_device: String,
    disk_interface: String,
    disk_cache: String,
    disk_discard: String,
    disk_detect_zeroes: String,
    vm_name: Option<String>,
    output_directory: Option<String>,
    headless: bool,
    communicator: String,
    cloud_init: Option<bool>,
    shutdown_command: Option<String>,
    shutdown_timeout: String,
    skip_compaction: bool,
    disk_compression: bool,
    qemu_img_args: Vec<QemuImgArgs>,
    boot_command: Vec<String>,
    boot_wait: Option<String>,
    boot_wait_for: Option<String>,
    boot_key_interval: String,
    http_directory: Option<String>,
    http_content: BTreeMap<String, String>,
    http_bind_address: String,
    http_port_min: Option<u16>,
    http_port_max: Option<u16>,
    cd_files: Vec<String>,
    cd_content: BTreeMap<String, String>,
    cd_label: Option<String>,
    firmware: Option<String>,
    efi_boot: bool,
    efi_firmware_code: Option<String>,
    efi_firmware_vars: Option<String>,
    efi_drop_efivars: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            iso_url: None,
            iso_urls: Vec::new(),
            iso_checksum: None,
            disk_image: false,
            use_backing_file: false,
            disk_size: None,
            format: "qcow2".into(),
            qemu_binary: "qemu-system-x86_64".into(),
            qemuargs: Vec::new(),
            machine_type: "pc".into(),
            accelerator: "auto".into(),
            cpus: 1,
            memory: 1024,
            net_device: "virtio-net".into(),
            disk_interface: "virtio".into(),
            disk_cache: "writeback".into(),
            disk_discard: "ignore".into(),
            disk_detect_zeroes: "off".into(),
            vm_name: None,
            output_directory: None,
            headless: true,
            communicator: "ssh".into(),
            cloud_init: None,
            shutdown_command: None,
            shutdown_timeout: "5m".into(),
            skip_compaction: false,
            disk_compression: false,
            qemu_img_args: Vec::new(),
            boot_command: Vec::new(),
            boot_wait: None,
            boot_wait_for: None,
            boot_key_interval: "10ms".into(),
            http_directory: None,
            http_content: BTreeMap::new(),
            http_bind_address: "127.0.0.1".into(),
            http_port_min: None,
            http_port_max: None,
            cd_files: Vec::new(),
            cd_content: BTreeMap::new(),
            cd_label: None,
            firmware: None,
            efi_boot: false,
            efi_firmware_code: None,
            efi_firmware_vars: None,
            efi_drop_efivars: false,
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// `accelerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Auto,
    Kvm,
    Tcg,
    None,
}

impl Accelerator {
    fn parse(text: &str) -> Option<Accelerator> {
        Some(match text {
            "auto" => Accelerator::Auto,
            "kvm" => Accelerator::Kvm,
            "tcg" => Accelerator::Tcg,
            "none" => Accelerator::None,
            _ => return None,
        })
    }
}

/// Everything the steps need, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<String>,
    pub checksum: Checksum,
    pub use_backing_file: bool,
    /// Bytes.
    pub disk_size: Option<u64>,
    pub format: Format,
    pub qemu_binary: String,
    pub qemuargs: Vec<Vec<String>>,
    pub machine_type: String,
    pub accelerator: Accelerator,
    pub cpus: u32,
    pub memory: u32,
    pub net_device: String,
    pub disk_interface: String,
    pub disk_cache: String,
    pub disk_discard: String,
    pub disk_detect_zeroes: String,
    /// `None`: use `kiln-SOURCE_NAME`.
    pub vm_name: Option<String>,
    /// `None`: use `output-SOURCE_NAME`.
    pub output_directory: Option<PathBuf>,
    pub ssh: Option<SshConfig>,
    /// `communicator = "qga"`.
    pub guest_agent: bool,
    pub cloud_init: bool,
    pub shutdown_command: Option<String>,
    pub shutdown_timeout: Duration,
    pub compress: bool,
    pub qemu_img_args: QemuImgArgs,
    /// `false`: the source is an installer ISO booted once, with a blank disk.
    pub disk_image: bool,
    pub boot: BootSettings,
    pub http: Option<HttpSpec>,
    pub cd: Option<CdSpec>,
    pub firmware: Firmware,
}

/// `boot_command` and how to time it.
#[derive(Debug, Clone, Default)]
pub struct BootSettings {
    pub command: Vec<String>,
    pub wait: Duration,
    pub wait_for: Option<String>,
    pub key_interval: Duration,
}

/// `firmware` / `efi_boot`.
#[derive(Debug, Clone, PartialEq)]
pub enum Firmware {
    /// QEMU's own (SeaBIOS).
    Default,
    /// `-bios PATH`.
    Bios(PathBuf),
    /// OVMF as pflash: the code (`None`: Debian's default place) and the variable store
    /// template (`None` with `drop_vars`: none attached; else beside the code).
    Efi {
        code: Option<PathBuf>,
        vars: Option<PathBuf>,
        drop_vars: bool,
    },
}

/// The blank disk of an ISO install when `disk_size` is unset (Packer's default).
pub const DEFAULT_ISO_DISK_SIZE: u64 = 40960 << 20;

fn one_of(config: &Config, errors: &mut Vec<Diagnostic>, key: &str, value: &str, allowed: &[&str]) {
    if !allowed.contains(&value) {
        let list = allowed
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(
            Diagnostic::error(format!("`{key}` cannot be `{value}`"))
                .at(config.span_of(key))
                .with_label(format!("allowed values: {list}")),
        );
    }
}

/// Parses `disk_size`: a number of MiB, or a number with a `K`/`M`/`G`/`T` suffix (optionally
/// followed by `B` or `iB`).
pub fn parse_disk_size(value: &serde_json::Value) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    if let Some(n) = value.as_u64() {
        return n.checked_mul(MIB);
    }
    let text = value.as_str()?.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..]
        .trim()
        .trim_end_matches("iB")
        .trim_end_matches('B');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "M" => 20,
        "K" => 10,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// Decodes and checks a source body; every problem is reported at once.
pub fn settings(config: &Config) -> Result<Settings, Diagnostics> {
    let opts: Options = config.decode()?;
    let mut errors = Vec::new();

    let mut urls: Vec<String> = opts.iso_url.iter().cloned().collect();
    urls.extend(opts.iso_urls.iter().cloned());
    if urls.is_empty() {
        errors.push(
            Diagnostic::error("one of `iso_url` or `iso_urls` is required")
                .at(config.span)
                .with_help("point `iso_url` at a bootable disk image and set `disk_image = true`"),
        );
    }
    if !opts.disk_image && opts.use_backing_file {
        errors.push(
            Diagnostic::error("`use_backing_file` needs `disk_image = true`")
                .at(config.span_of("use_backing_file"))
                .with_label("an ISO install has no base disk to back the output"),
        );
    }
    let checksum = match opts.iso_checksum.as_deref().map(Checksum::parse) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            errors.push(Diagnostic::error(e.to_string()).at(config.span_of("iso_checksum")));
            None
        }
        None => {
            errors.push(
                Diagnostic::error("`iso_checksum` is required")
                    .at(config.span)
                    .with_help("write e.g. `sha256:...`, or `none` to skip the check explicitly"),
            );
            None
        }
    };
    one_of(
        config,
        &mut errors,
        "format",
        &opts.format,
        &["qcow2", "raw"],
    );
    let format = if opts.format == "raw" {
        Format::Raw
    } else {
        Format::Qcow2
    };
    if opts.use_backing_file && format != Format::Qcow2 {
        errors.push(
            Diagnostic::error("`use_backing_file` needs `format = \"qcow2\"`")
                .at(config.span_of("use_backing_file")),
        );
    }
    let accel_text = std::env::var(ACCELERATOR_ENV).unwrap_or(opts.accelerator.clone());
    let accelerator = Accelerator::parse(&accel_text).unwrap_or_else(|| {
        one_of(
            config,
            &mut errors,
            "accelerator",
            &accel_text,
            &["auto", "kvm", "tcg", "none"],
        );
        Accelerator::Auto
    });
    one_of(
        config,
        &mut errors,
        "communicator",
        &opts.communicator,
        &["ssh", "qga", "none"],
    );
    one_of(
        config,
        &mut errors,
        "disk_discard",
        &opts.disk_discard,
        &["ignore", "unmap"],
    );
    one_of(
        config,
        &mut errors,
        "disk_detect_zeroes",
        &opts.disk_detect_zeroes,
        &["off", "on", "unmap"],
    );
    let disk_size = opts.disk_size.as_ref().and_then(|v| {
        let size = parse_disk_size(v);
        if size.is_none() {
            errors.push(
                Diagnostic::error(format!("`disk_size` cannot be {v}"))
                    .at(config.span_of("disk_size"))
                    .with_label("write e.g. `10G`, `512M` or a number of MiB"),
            );
        }
        size
    });
    let shutdown_timeout = parse_go_duration(&opts.shutdown_timeout).unwrap_or_else(|e| {
        errors.push(Diagnostic::error(e.to_string()).at(config.span_of("shutdown_timeout")));
        Duration::ZERO
    });
    let cloud_init = opts.cloud_init.unwrap_or(opts.disk_image);
    let mut duration = |key: &str, text: &str| {
        parse_go_duration(text).unwrap_or_else(|e| {
            errors.push(Diagnostic::error(e.to_string()).at(config.span_of(key)));
            Duration::ZERO
        })
    };
    let boot_wait = match (&opts.boot_wait, &opts.boot_wait_for) {
        (Some(text), _) => duration("boot_wait", text),
        (None, Some(_)) => Duration::ZERO,
        (None, None) => Duration::from_secs(10),
    };
    let key_interval = duration("boot_key_interval", &opts.boot_key_interval);
    let serves_http = opts.http_directory.is_some() || !opts.http_content.is_empty();
    for line in &opts.boot_command {
        if let Err(e) = boot::check_placeholders(line, serves_http) {
            errors.push(Diagnostic::error(e.to_string()).at(config.span_of("boot_command")));
        }
    }
    if opts.http_directory.is_some() && !opts.http_content.is_empty() {
        errors.push(
            Diagnostic::error("`http_directory` and `http_content` conflict: set one")
                .at(config.span_of("http_content")),
        );
    }
    let bind = opts.http_bind_address.parse().unwrap_or_else(|_| {
        errors.push(
            Diagnostic::error(format!(
                "`http_bind_address` cannot be `{}`",
                opts.http_bind_address
            ))
            .at(config.span_of("http_bind_address"))
            .with_label("write an IP address such as `127.0.0.1`"),
        );
        std::net::IpAddr::from([127, 0, 0, 1])
    });
    let ports = match (opts.http_port_min, opts.http_port_max) {
        (None, None) => (0, 0),
        (Some(min), None) => (min, min),
        (None, Some(max)) => (max, max),
        (Some(min), Some(max)) => {
            if min > max {
                errors.push(
                    Diagnostic::error("`http_port_min` is above `http_port_max`")
                        .at(config.span_of("http_port_min")),
                );
            }
            (min, max)
        }
    };
    let http = serves_http.then(|| HttpSpec {
        directory: opts.http_directory.as_ref().map(PathBuf::from),
        content: opts
            .http_content
            .iter()
            .map(|(path, text)| (format!("/{}", path.trim_start_matches('/')), text.clone()))
            .collect(),
        bind,
        ports,
    });
    for path in opts.cd_content.keys() {
        if let Err(e) = crate::cd::check_cd_path(path) {
            errors.push(Diagnostic::error(e.to_string()).at(config.span_of("cd_content")));
        }
    }
    let cd = (!opts.cd_files.is_empty() || !opts.cd_content.is_empty()).then(|| CdSpec {
        files: opts.cd_files.clone(),
        content: opts.cd_content.clone(),
        label: opts.cd_label.clone(),
    });
    if opts.cd_label.is_some() && cd.is_none() {
        errors.push(
            Diagnostic::error("`cd_label` without `cd_files` or `cd_content`")
                .at(config.span_of("cd_label")),
        );
    }
    let firmware = match (&opts.firmware, opts.efi_boot) {
        (Some(_), true) => {
            errors.push(
                Diagnostic::error("`firmware` and `efi_boot` conflict: set one")
                    .at(config.span_of("firmware")),
            );
            Firmware::Default
        }
        (Some(path), false) => Firmware::Bios(PathBuf::from(path)),
        (None, true) => Firmware::Efi {
            code: opts.efi_firmware_code.as_ref().map(PathBuf::from),
            vars: opts.efi_firmware_vars.as_ref().map(PathBuf::from),
            drop_vars: opts.efi_drop_efivars,
        },
        (None, false) => {
            for key in ["efi_firmware_code", "efi_firmware_vars", "efi_drop_efivars"] {
                if config.attrs.iter().any(|a| a.key == key) {
                    errors.push(
                        Diagnostic::error(format!("`{key}` needs `efi_boot = true`"))
                            .at(config.span_of(key)),
                    );
                }
            }
            Firmware::Default
        }
    };
    if opts.communicator == "none" && opts.shutdown_command.is_some() {
        errors.push(
            Diagnostic::error("`shutdown_command` needs a communicator to run it")
                .at(config.span_of("shutdown_command"))
                .with_help(
                    "with `communicator = \"none\"` the guest must power off by itself; Kiln waits for it",
                ),
        );
    }
    if opts.cpus == 0 || opts.memory == 0 {
        errors.push(Diagnostic::error("`cpus` and `memory` must be positive").at(config.span));
    }
    let ssh = if opts.communicator == "ssh" {
        match config.decode::<SshConfig>() {
            Ok(ssh) => {
                if ssh.ssh_username.is_none() {
                    errors.push(
                        Diagnostic::error("`ssh_username` is required with the ssh communicator")
                            .at(config.span),
                    );
                }
                if !cloud_init && ssh.ssh_password.is_none() && ssh.ssh_private_key_file.is_none() {
                    errors.push(
                        Diagnostic::error(
                            "without cloud-init, set `ssh_password` or `ssh_private_key_file`",
                        )
                        .at(config.span_of("cloud_init")),
                    );
                }
                Some(ssh)
            }
            Err(d) => {
                errors.extend(d.0);
                None
            }
        }
    } else {
        None
    };
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(Settings {
        urls,
        checksum: checksum.expect("checked above"),
        use_backing_file: opts.use_backing_file,
        disk_size,
        format,
        qemu_binary: opts.qemu_binary,
        qemuargs: opts.qemuargs,
        machine_type: opts.machine_type,
        accelerator,
        cpus: opts.cpus,
        memory: opts.memory,
        net_device: opts.net_device,
        disk_interface: opts.disk_interface,
        disk_cache: opts.disk_cache,
        disk_discard: opts.disk_discard,
        disk_detect_zeroes: opts.disk_detect_zeroes,
        vm_name: opts.vm_name,
        output_directory: opts.output_directory.map(PathBuf::from),
        ssh,
        guest_agent: opts.communicator == "qga",
        cloud_init,
        shutdown_command: opts.shutdown_command,
        shutdown_timeout,
        compress: opts.disk_compression && !opts.skip_compaction && format == Format::Qcow2,
        qemu_img_args: opts.qemu_img_args.into_iter().next().unwrap_or_default(),
        disk_image: opts.disk_image,
        boot: BootSettings {
            command: opts.boot_command,
            wait: boot_wait,
            wait_for: opts.boot_wait_for,
            key_interval,
        },
        http,
        cd,
        firmware,
    })
}
