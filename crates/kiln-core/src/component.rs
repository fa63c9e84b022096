//! The traits every builder, provisioner and post-processor implements, and the [`Registry`] that
//! maps template type names to them.
//!
//! A component kind describes its options once ([`OptionSpec`]): the template validator uses the
//! list to reject unknown attributes with a "did you mean" hint, and docs tests check that every
//! option is documented.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_comm::Communicator;

use crate::artifact::Artifact;
use crate::diag::Diagnostics;
use crate::plan::Config;
use crate::runner::{BuildCtx, BuildError};
use crate::sensitive::Sensitive;

/// One option of a component, as written in a template.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    /// The HCL type, e.g. `string`, `bool`, `list(string)`, `duration`, or `block` for a nested
    /// block that may repeat. `block(object({NAME = TYPE, ...}))` also lists the block's
    /// attributes: the validator then rejects unknown ones (with "did you mean") and converts
    /// each to its type, as for top-level options.
    pub ty: &'static str,
    pub required: bool,
    /// One sentence for docs and `kiln inspect`.
    pub doc: &'static str,
}

impl OptionSpec {
    /// Whether the option is a nested block rather than an attribute.
    pub fn is_block(&self) -> bool {
        self.ty == "block" || self.ty.starts_with("block(")
    }

    /// The attributes of a nested block and their types, when `ty` lists them.
    pub fn block_attrs(&self) -> Option<Vec<(String, crate::template::types::Type)>> {
        use crate::template::types::Type;
        let inner = self.ty.strip_prefix("block(")?.strip_suffix(')')?;
        match Type::parse(&inner.parse::<hcl::Expression>().ok()?) {
            Ok(Type::Object(fields)) => Some(fields),
            _ => None,
        }
    }
}

/// What provisioners need to know about the machine, and what `build.*` exposes.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// `build.ID`: the builder's identifier for the machine (VM name, container id).
    pub id: Option<String>,
    /// `build.ConnType`: `ssh`, `qga`, `docker`, `none`.
    pub conn_type: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Sensitive<String>>,
    pub ssh_public_key: Option<String>,
    pub ssh_private_key: Option<Sensitive<String>>,
    /// A file holding the private key, when the key came from a file (`ssh_private_key_file`);
    /// tools that need a key file use it instead of writing `ssh_private_key` to a temp file.
    pub ssh_private_key_file: Option<PathBuf>,
    /// The machine's verified SSH host public key, OpenSSH `TYPE BASE64` form (as in
    /// `known_hosts`), for tools that connect on their own (e.g. `ansible`).
    pub ssh_host_key: Option<String>,
    /// `build.PackerHTTPAddr`, when the builder serves files to the guest.
    pub http_addr: Option<String>,
    /// `host:port` of the SSH jump host the communicator tunnels through (`ssh_bastion_host`):
    /// `host` is then reachable only through it.
    pub ssh_bastion: Option<String>,
}

impl ConnInfo {
    /// The `build.*` variables Packer exposes, by their Packer names.
    pub fn runtime_vars(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            m.insert(k.to_string(), v.unwrap_or_default());
        };
        put("ID", self.id.clone());
        put("ConnType", Some(self.conn_type.clone()));
        put("Host", self.host.clone());
        put("Port", self.port.map(|p| p.to_string()));
        put("User", self.user.clone());
        put(
            "Password",
            self.password.as_ref().map(|p| p.expose().clone()),
        );
        put("SSHPublicKey", self.ssh_public_key.clone());
        put(
            "SSHPrivateKey",
            self.ssh_private_key.as_ref().map(|p| p.expose().clone()),
        );
        put("PackerHTTPAddr", self.http_addr.clone());
        m
    }
}

/// A builder type (`null`, `qemu`, `docker`, ...).
pub trait BuilderKind: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn options(&self) -> &'static [OptionSpec];
    /// Decodes and checks an evaluated source body. Pure: no I/O beyond reading local files the
    /// config names.
    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics>;
}

/// A configured builder.
#[async_trait]
pub trait Builder: Send + Sync {
    /// Runs the builder's steps. Once the machine is reachable, the builder calls
    /// `hook.provision` exactly once with its communicator.
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError>;
}

/// Runs the build's provisioners; supplied to [`Builder::run`] by the runner.
#[async_trait]
pub trait ProvisionHook: Send + Sync {
    async fn provision(
        &self,
        ctx: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError>;
}

/// A provisioner type (`shell`, `shell-local`, `file`, ...).
pub trait ProvisionerKind: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn options(&self) -> &'static [OptionSpec];
    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics>;
}

/// What a provisioner gets to work with.
pub struct ProvisionCtx<'a> {
    pub build: &'a BuildCtx,
    pub comm: &'a dyn Communicator,
    pub conn: &'a ConnInfo,
}

/// A configured provisioner.
#[async_trait]
pub trait Provisioner: Send + Sync {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), crate::BoxError>;

    /// Whether `provision` watches `ctx.build.cancel` and returns soon after a cancellation,
    /// having stopped its own work gracefully (and at once when the build is hurried). The
    /// runner then waits for it instead of dropping it, until the build is hurried; a
    /// provisioner that says `false` is dropped as soon as the build is cancelled.
    fn stops_on_cancel(&self) -> bool {
        false
    }
}

/// A post-processor type (`manifest`, `shell-local`, ...).
pub trait PostProcessorKind: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn options(&self) -> &'static [OptionSpec];
    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics>;
}

/// What a post-processor returns.
pub struct PostProcessed {
    pub artifact: Artifact,
    /// Whether the input artifact should be kept; the template's `keep_input_artifact` wins
    /// when set.
    pub keep_input: bool,
}

/// A configured post-processor.
#[async_trait]
pub trait PostProcessor: Send + Sync {
    async fn process(
        &self,
        ctx: &BuildCtx,
        input: Artifact,
    ) -> Result<PostProcessed, crate::BoxError>;
}

/// All component kinds Kiln knows, by type name. Filled by the CLI.
#[derive(Default, Clone)]
pub struct Registry {
    pub builders: BTreeMap<&'static str, Arc<dyn BuilderKind>>,
    pub provisioners: BTreeMap<&'static str, Arc<dyn ProvisionerKind>>,
    pub post_processors: BTreeMap<&'static str, Arc<dyn PostProcessorKind>>,
}

impl Registry {
    pub fn add_builder(&mut self, kind: Arc<dyn BuilderKind>) {
        self.builders.insert(kind.type_name(), kind);
    }

    pub fn add_provisioner(&mut self, kind: Arc<dyn ProvisionerKind>) {
        self.provisioners.insert(kind.type_name(), kind);
    }

    pub fn add_post_processor(&mut self, kind: Arc<dyn PostProcessorKind>) {
        self.post_processors.insert(kind.type_name(), kind);
    }
}
