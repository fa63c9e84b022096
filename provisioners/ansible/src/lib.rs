//! The `ansible` provisioner: runs the host's `ansible-playbook` against the machine being built,
//! directly over SSH with an inventory Kiln writes (no proxy in between, unlike Packer's default).
//!
//! Per run: a private temp directory holds the `known_hosts` file pinning the machine's verified
//! host key, the private key when the builder has it only in memory, and the SSH control
//! sockets; the inventory goes to `inventory_directory` (or the temp directory). All of it is
//! removed on success, failure and cancellation, except an inventory the user asked to keep.

mod config;
mod inventory;
mod process;
mod workspace;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::component::{
    ConnInfo, OptionSpec, ProvisionCtx, Provisioner, ProvisionerKind, Registry,
};
use kiln_core::diag::Diagnostics;
use kiln_core::event::Level;
use kiln_core::plan::Config;
use kiln_core::runner::BuildCtx;

use config::Settings;
pub use inventory::HostKeyError;
use inventory::{HostKey, Inventory};
use process::Invocation;
use workspace::Workspace;

/// The type name in templates.
pub const TYPE_NAME: &str = "ansible";

/// Adds the `ansible` provisioner.
pub fn register(registry: &mut Registry) {
    registry.add_provisioner(Arc::new(AnsibleKind));
}

#[rustfmt::skip]
const OPTIONS: &[OptionSpec] = &[
    OptionSpec { name: "playbook_file", ty: "string", required: true,
        doc: "The playbook to run." },
    OptionSpec { name: "command", ty: "string", required: false,
        doc: "The program that runs the playbook." },
    OptionSpec { name: "extra_arguments", ty: "list(string)", required: false,
        doc: "Extra arguments for `ansible-playbook`, before the playbook." },
    OptionSpec { name: "ansible_env_vars", ty: "list(string)", required: false,
        doc: "Environment variables for Ansible as `KEY=VALUE` strings." },
    OptionSpec { name: "groups", ty: "list(string)", required: false,
        doc: "Inventory groups the machine belongs to." },
    OptionSpec { name: "host_alias", ty: "string", required: false,
        doc: "The machine's name in the inventory." },
    OptionSpec { name: "user", ty: "string", required: false,
        doc: "The user Ansible logs in as; the builder's SSH user when unset." },
    OptionSpec { name: "roles_path", ty: "string", required: false,
        doc: "Directory of roles: `ANSIBLE_ROLES_PATH`, and where `galaxy_file` roles are installed." },
    OptionSpec { name: "galaxy_file", ty: "string", required: false,
        doc: "A requirements file installed with `ansible-galaxy install -r` before the playbook runs." },
    OptionSpec { name: "galaxy_command", ty: "string", required: false,
        doc: "The program that installs `galaxy_file`." },
    OptionSpec { name: "inventory_directory", ty: "string", required: false,
        doc: "Directory the inventory file is written to (e.g. beside `group_vars`)." },
    OptionSpec { name: "keep_inventory_file", ty: "bool", required: false,
        doc: "Keep the generated inventory file after the run." },
    OptionSpec { name: "use_proxy", ty: "bool", required: false,
        doc: "Only `false` is accepted: Kiln always connects Ansible directly to the machine." },
];

/// Why running Ansible failed.
#[derive(Debug, thiserror::Error)]
pub enum AnsibleError {
    #[error(
        "the ansible provisioner needs the ssh communicator, but this build uses `{conn_type}`; \
         other communicators will be supported later"
    )]
    NotSsh { conn_type: String },
    #[error(
        "the machine is reached through the jump host `{bastion}` (`ssh_bastion_host`), which \
         the ansible provisioner does not support yet: Ansible would connect to the machine \
         directly"
    )]
    Bastion { bastion: String },
    #[error("the builder did not report the machine's {what}, which Ansible needs")]
    MissingConnInfo { what: &'static str },
    #[error("no user to log in as: the builder reported none; set `user`")]
    NoUser,
    #[error("cannot use the machine's host key")]
    HostKey(#[source] HostKeyError),
    #[error("cannot write the temporary {what}")]
    TempFile {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot keep the inventory file")]
    KeepInventory(#[source] std::io::Error),
    #[error("`{program}` was not found; install Ansible (e.g. `apt-get install ansible-core`) or set `command`")]
    NotInstalled { program: String },
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the output of {what}")]
    Output {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` exited with code {code} running {what}")]
    ExitCode {
        program: String,
        what: String,
        code: i32,
    },
    #[error("`{program}` was killed by signal {signal} running {what}")]
    Signal {
        program: String,
        what: String,
        signal: i32,
    },
    #[error("cancelled while running {what}")]
    Cancelled { what: String },
}

struct AnsibleKind;

impl ProvisionerKind for AnsibleKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        Ok(Box::new(AnsibleProvisioner(Settings::from_config(config)?)))
    }
}

struct AnsibleProvisioner(Settings);

#[async_trait]
impl Provisioner for AnsibleProvisioner {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        run(&self.0, ctx.build, ctx.conn).await?;
        Ok(())
    }

    /// The process group gets SIGTERM when the build is cancelled (and SIGKILL when hurried).
    fn stops_on_cancel(&self) -> bool {
        true
    }
}

/// Where and how Ansible logs in.
struct Target {
    host: String,
    port: u16,
    user: String,
    host_key: HostKey,
}

impl Target {
    fn new(settings: &Settings, conn: &ConnInfo) -> Result<Target, AnsibleError> {
        if conn.conn_type != "ssh" {
            return Err(AnsibleError::NotSsh {
                conn_type: conn.conn_type.clone(),
            });
        }
        if let Some(bastion) = &conn.ssh_bastion {
            return Err(AnsibleError::Bastion {
                bastion: bastion.clone(),
            });
        }
        let missing = |what| AnsibleError::MissingConnInfo { what };
        let host = conn.host.clone().ok_or(missing("address"))?;
        let host_key = conn
            .ssh_host_key
            .as_deref()
            .ok_or(missing("SSH host key"))?;
        Ok(Target {
            host,
            port: conn.port.unwrap_or(22),
            user: settings
                .user
                .clone()
                .or_else(|| conn.user.clone())
                .ok_or(AnsibleError::NoUser)?,
            host_key: HostKey::parse(host_key).map_err(AnsibleError::HostKey)?,
        })
    }
}

fn temp_file(what: &'static str) -> impl FnOnce(std::io::Error) -> AnsibleError {
    move |source| AnsibleError::TempFile { what, source }
}

/// Runs the galaxy install (if any) and the playbook against the machine `conn` describes.
async fn run(settings: &Settings, build: &BuildCtx, conn: &ConnInfo) -> Result<(), AnsibleError> {
    let target = Target::new(settings, conn)?;
    let workspace = Workspace::create().map_err(temp_file("directory"))?;
    let known_hosts = workspace
        .write("known_hosts", &target.host_key.known_hosts())
        .map_err(temp_file("known_hosts file"))?;
    let private_key_file = match (&conn.ssh_private_key_file, &conn.ssh_private_key) {
        (Some(file), _) => file.clone(),
        (None, Some(key)) => {
            let mut text = key.expose().clone();
            // OpenSSH refuses a key file whose last line does not end with a newline.
            if !text.ends_with('\n') {
                text.push('\n');
            }
            workspace
                .write("id_key", &text)
                .map_err(temp_file("private key file"))?
        }
        (None, None) => {
            return Err(AnsibleError::MissingConnInfo {
                what: "SSH private key",
            })
        }
    };
    let inventory = Inventory {
        host_alias: settings.host_alias.clone(),
        groups: settings.groups.clone(),
        host: target.host.clone(),
        port: target.port,
        user: target.user.clone(),
        private_key_file,
        ssh_args: inventory::ssh_args(&known_hosts, &workspace.control_dir()),
    };
    let inventory_file = write_inventory(settings, &inventory)?;
    build.events.message(
        Level::Info,
        format!(
            "running playbook `{}` against `{}@{}:{}` directly over SSH",
            settings.playbook.display(),
            target.user,
            target.host,
            target.port
        ),
    );

    let env = environment(settings);
    let result = async {
        if let Some(galaxy) = galaxy_invocation(settings, &env) {
            process::run(build, &galaxy).await?;
        }
        let vars = extra_vars(build, conn);
        process::run(
            build,
            &playbook_invocation(settings, &inventory_file, &vars, &env),
        )
        .await
    }
    .await;

    let kept = match settings.keep_inventory_file {
        true => inventory_file.keep().map(Some),
        false => Ok(None),
    };
    // Closing SSH control masters waits on `ssh -O exit`; keep that off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop(workspace)).await;
    match kept {
        Ok(Some(path)) => build.events.message(
            Level::Info,
            format!("kept the inventory file `{}`", path.display()),
        ),
        Ok(None) => {}
        // Ansible's own failure says more.
        Err(e) => return result.and(Err(AnsibleError::KeepInventory(e.error))),
    }
    result
}

/// Writes the inventory as `kiln-ansible-XXXXXX.json` (mode `0600`) in `inventory_directory` or
/// the system's temp directory; removed when the returned path is dropped.
fn write_inventory(
    settings: &Settings,
    inventory: &Inventory,
) -> Result<tempfile::TempPath, AnsibleError> {
    use std::io::Write;
    let mut builder = tempfile::Builder::new();
    builder.prefix("kiln-ansible-").suffix(".json");
    let file = match &settings.inventory_directory {
        Some(dir) => builder.tempfile_in(dir),
        None => builder.tempfile(),
    };
    let text = serde_json::to_string_pretty(&inventory.to_json()).expect("JSON of strings");
    let file = file.and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        Ok(file)
    });
    let file = file.map_err(temp_file("inventory file"))?;
    Ok(file.into_temp_path())
}

/// The variables Kiln adds to Ansible's environment; the user's `ansible_env_vars` win.
fn environment(settings: &Settings) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([("PYTHONUNBUFFERED".to_string(), "1".to_string())]);
    if let Some(roles) = &settings.roles_path {
        env.insert(
            "ANSIBLE_ROLES_PATH".to_string(),
            roles.to_string_lossy().into_owned(),
        );
    }
    env.extend(settings.env.clone());
    env
}

/// The variables Packer passes to every playbook, and Kiln's own.
fn extra_vars(build: &BuildCtx, conn: &ConnInfo) -> serde_json::Value {
    let mut vars = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        vars.insert(k.to_string(), serde_json::Value::from(v));
    };
    put("packer_build_name", &build.source_name);
    put("packer_builder_type", &build.source_type);
    if let Some(addr) = &conn.http_addr {
        put("packer_http_addr", addr);
    }
    put("kiln_build_name", &build.build_name);
    put("kiln_run_id", &build.run_id.to_string());
    serde_json::Value::Object(vars)
}

fn galaxy_invocation(settings: &Settings, env: &BTreeMap<String, String>) -> Option<Invocation> {
    let galaxy = settings.galaxy.as_ref()?;
    let mut args: Vec<OsString> = vec!["install".into(), "-r".into(), galaxy.file.clone().into()];
    if let Some(roles) = &settings.roles_path {
        args.extend(["-p".into(), roles.clone().into()]);
    }
    Some(Invocation {
        program: galaxy.command.clone(),
        args,
        env: env.clone(),
        what: format!("galaxy file `{}`", galaxy.file.display()),
    })
}

fn playbook_invocation(
    settings: &Settings,
    inventory_file: &Path,
    extra_vars: &serde_json::Value,
    env: &BTreeMap<String, String>,
) -> Invocation {
    let mut args: Vec<OsString> = vec![
        "--inventory".into(),
        inventory_file.into(),
        "--extra-vars".into(),
        extra_vars.to_string().into(),
    ];
    args.extend(settings.extra_arguments.iter().map(OsString::from));
    args.push(settings.playbook.clone().into());
    Invocation {
        program: settings.command.clone(),
        args,
        env: env.clone(),
        what: format!("playbook `{}`", settings.playbook.display()),
    }
}

#[cfg(test)]
mod tests;
