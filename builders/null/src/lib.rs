//! The `null` builder: no machine of its own. It hands provisioners a communicator (`none`, or
//! `ssh` to an existing host) and produces an empty artifact.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_comm::ssh::{HostKeyTrust, SshCommunicator, SshConfig};
use kiln_comm::{Communicator, NoneCommunicator};
use kiln_core::artifact::Artifact;
use kiln_core::component::{Builder, BuilderKind, ConnInfo, OptionSpec, ProvisionHook, Registry};
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::event::Level;
use kiln_core::plan::Config;
use kiln_core::runner::{run_steps, BuildCtx, BuildError, CleanupCtx, Step};
use kiln_core::sensitive::Sensitive;
use serde::Deserialize;

/// The type name in templates.
pub const TYPE_NAME: &str = "null";

/// The artifact id, as Packer's null builder reports it.
pub const ARTIFACT_ID: &str = "Null";

/// Communicators the null builder accepts.
const COMMUNICATORS: &[&str] = &["none", "ssh"];

/// Adds the `null` builder.
pub fn register(registry: &mut Registry) {
    registry.add_builder(Arc::new(NullKind));
}

macro_rules! opt {
    ($name:literal, $ty:literal, $doc:literal) => {
        OptionSpec {
            name: $name,
            ty: $ty,
            required: false,
            doc: $doc,
        }
    };
}

const OPTIONS: &[OptionSpec] = &[
    opt!(
        "communicator",
        "string",
        "How provisioners reach the machine: `none` or `ssh`."
    ),
    opt!("ssh_host", "string", "Address of the existing machine."),
    opt!("ssh_port", "number", "Port of the machine's SSH server."),
    opt!("ssh_username", "string", "User to log in as."),
    opt!("ssh_password", "string", "Password for `ssh_username`."),
    opt!(
        "ssh_private_key_file",
        "string",
        "Private key file for `ssh_username`."
    ),
    opt!("ssh_pty", "bool", "Run commands in a pseudo-terminal."),
    opt!(
        "ssh_timeout",
        "duration",
        "How long to wait for an SSH login."
    ),
    opt!(
        "ssh_keep_alive_interval",
        "duration",
        "Interval of keep-alive messages; `0` disables them."
    ),
    opt!(
        "ssh_host_key_fingerprint",
        "string",
        "Expected host key fingerprint (`SHA256:...`)."
    ),
    opt!(
        "ssh_bastion_host",
        "string",
        "Jump host to reach the machine through."
    ),
    opt!(
        "ssh_bastion_port",
        "number",
        "Port of the jump host's SSH server."
    ),
    opt!("ssh_bastion_username", "string", "User on the jump host."),
    opt!(
        "ssh_bastion_password",
        "string",
        "Password on the jump host."
    ),
    opt!(
        "ssh_bastion_private_key_file",
        "string",
        "Private key file for the jump host."
    ),
    opt!(
        "ssh_bastion_host_key_fingerprint",
        "string",
        "Expected host key fingerprint of the jump host."
    ),
    opt!(
        "ssh_handshake_attempts",
        "number",
        "How many rejected logins to tolerate."
    ),
];

/// The options as written (see `docs/builders/null.md`).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Options {
    communicator: String,
    #[serde(flatten)]
    ssh: SshConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            communicator: "none".to_string(),
            ssh: SshConfig::default(),
        }
    }
}

struct NullKind;

impl BuilderKind for NullKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics> {
        let opts: Options = config.decode()?;
        if !COMMUNICATORS.contains(&opts.communicator.as_str()) {
            let allowed = COMMUNICATORS
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let d = Diagnostic::error(format!(
                "the null builder does not support the `{}` communicator",
                opts.communicator
            ))
            .at(config.span_of("communicator"))
            .with_label(format!("allowed values: {allowed}"));
            return Err(d.into());
        }
        if opts.communicator == "none" {
            return Ok(Box::new(NullBuilder { ssh: None }));
        }
        let mut diags = Diagnostics::new();
        for (key, set) in [
            ("ssh_host", opts.ssh.ssh_host.is_some()),
            ("ssh_username", opts.ssh.ssh_username.is_some()),
        ] {
            if !set {
                diags.push(
                    Diagnostic::error(format!("`{key}` is required with `communicator = \"ssh\"`"))
                        .at(config.span_of("communicator")),
                );
            }
        }
        if let Some(path) = &opts.ssh.ssh_private_key_file {
            if !path.is_file() {
                diags.push(
                    Diagnostic::error(format!(
                        "the private key file `{}` does not exist",
                        path.display()
                    ))
                    .at(config.span_of("ssh_private_key_file")),
                );
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Box::new(NullBuilder {
            ssh: Some(opts.ssh),
        }))
    }
}

struct NullBuilder {
    /// The SSH settings, when `communicator = "ssh"`.
    ssh: Option<SshConfig>,
}

/// What the null builder's steps share.
#[derive(Default)]
struct NullState {
    comm: Option<Box<dyn Communicator>>,
    conn: ConnInfo,
}

/// Why the `connect` step failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot connect over SSH")]
    Ssh(#[from] kiln_comm::ssh::ConnectError),
    #[error("cannot read the private key file `{}`", path.display())]
    ReadKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sets up the communicator: `none`, or an SSH session to the configured host.
struct Connect<'a> {
    ssh: Option<&'a SshConfig>,
}

#[async_trait]
impl Step<NullState> for Connect<'_> {
    fn name(&self) -> &str {
        "connect"
    }

    async fn run(&self, state: &mut NullState, ctx: &BuildCtx) -> Result<(), kiln_core::BoxError> {
        let Some(ssh) = self.ssh else {
            state.conn = ConnInfo {
                conn_type: "none".to_string(),
                ..ConnInfo::default()
            };
            state.comm = Some(Box::new(NoneCommunicator));
            return Ok(());
        };
        let host = ssh.ssh_host.clone().unwrap_or_default();
        let private_key = match &ssh.ssh_private_key_file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConnectError::ReadKey {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        ctx.events.waiting(
            format!("waiting for SSH on {host}:{}", ssh.ssh_port),
            Some(ssh.ssh_timeout),
        );
        let comm = SshCommunicator::connect(ssh)
            .await
            .map_err(ConnectError::from)?;
        let key = comm.host_key();
        let machine = format!("{host}:{}", ssh.ssh_port);
        let bastion = comm.bastion_host_key().zip(ssh.bastion_address());
        let keys = [(machine, &key, "ssh_host_key_fingerprint")]
            .into_iter()
            .chain(bastion.as_ref().map(|(info, address)| {
                (address.clone(), info, "ssh_bastion_host_key_fingerprint")
            }));
        for (address, info, option) in keys {
            if info.trust == HostKeyTrust::FirstUse {
                ctx.events.message(
                    Level::Info,
                    format!(
                        "trusting the host key of {address} on first use: {} \
                         (pin it with `{option}`)",
                        info.fingerprint
                    ),
                );
            }
        }
        state.conn = ConnInfo {
            conn_type: "ssh".to_string(),
            host: Some(host),
            port: Some(ssh.ssh_port),
            user: ssh.ssh_username.clone(),
            password: ssh
                .ssh_password
                .as_ref()
                .map(|p| Sensitive::new(p.expose().to_string())),
            ssh_private_key: private_key.map(Sensitive::new),
            ssh_private_key_file: ssh.ssh_private_key_file.clone(),
            ssh_host_key: Some(key.public_key),
            ssh_bastion: ssh.bastion_address(),
            ..ConnInfo::default()
        };
        state.comm = Some(Box::new(comm));
        Ok(())
    }

    async fn cleanup(
        &self,
        state: &mut NullState,
        _: &CleanupCtx<'_>,
    ) -> Result<(), kiln_core::BoxError> {
        // Dropping the communicator closes its session.
        state.comm = None;
        Ok(())
    }
}

/// Runs the build's provisioners through the runner's hook.
struct Provision<'a> {
    hook: &'a dyn ProvisionHook,
}

#[async_trait]
impl Step<NullState> for Provision<'_> {
    fn name(&self) -> &str {
        "provision"
    }

    /// The hook returns soon after a cancellation, once the provisioner has stopped its work.
    fn stops_on_cancel(&self) -> bool {
        true
    }

    async fn run(&self, state: &mut NullState, ctx: &BuildCtx) -> Result<(), kiln_core::BoxError> {
        let comm = state
            .comm
            .as_ref()
            .expect("the connect step runs before provision");
        self.hook.provision(ctx, &state.conn, comm.as_ref()).await?;
        Ok(())
    }
}

#[async_trait]
impl Builder for NullBuilder {
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        let mut state = NullState::default();
        let connect = Connect {
            ssh: self.ssh.as_ref(),
        };
        run_steps(&[&connect, &Provision { hook }], &mut state, ctx).await?;
        Ok(Artifact {
            builder_type: TYPE_NAME.to_string(),
            id: ARTIFACT_ID.to_string(),
            ..Artifact::default()
        })
    }
}

#[cfg(test)]
mod tests;
