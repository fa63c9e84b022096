//! The `docker` builder: starts a container from an image through the Engine API, provisions it
//! through the docker communicator, and commits it as an image (or exports or discards it).
//!
//! The steps (`steps.rs`): prepare image (use a local one, pull only when missing) → start
//! container → provision → commit | export | discard. The container is removed by its step's
//! cleanup on success, failure and cancellation; `-on-error=abort` leaves it and reports it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::artifact::Artifact;
use kiln_core::component::{Builder, BuilderKind, OptionSpec, ProvisionHook, Registry};
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use kiln_core::runner::{BuildCtx, BuildError};
use serde::Deserialize;

mod reproducible;
mod steps;

pub use steps::platform_mismatch;

/// The type name in templates.
pub const TYPE_NAME: &str = "docker";

/// Adds the `docker` builder.
pub fn register(registry: &mut Registry) {
    registry.add_builder(Arc::new(DockerKind));
}

const fn opt(name: &'static str, ty: &'static str, doc: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        ty,
        required: false,
        doc,
    }
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "image",
        ty: "string",
        required: true,
        doc: "The base image, e.g. `debian:bookworm` or an image id.",
    },
    opt("pull", "bool", "Pull the image when it is not present locally (default true)."),
    opt("commit", "bool", "Commit the container as an image."),
    opt("export_path", "string", "Export the container's filesystem to this tar file."),
    opt("discard", "bool", "Throw the container away after provisioning."),
    opt(
        "changes",
        "list(string)",
        "Dockerfile instructions applied to the committed image (LABEL, ENV, CMD, ...).",
    ),
    opt(
        "run_command",
        "list(string)",
        "The container's keep-alive command (argv; the image's entrypoint is bypassed).",
    ),
    opt("platform", "string", "The platform of the container, e.g. `linux/amd64`."),
    opt("privileged", "bool", "Run the container privileged."),
    opt("cap_add", "list(string)", "Linux capabilities to add to the container."),
    opt("cap_drop", "list(string)", "Linux capabilities to drop from the container."),
    opt(
        "volumes",
        "map(string)",
        "Host paths (keys) bound into the container at the given paths (values).",
    ),
    opt(
        "container_dir",
        "string",
        "Accepted for Packer compatibility; unused: uploads go through the archive API.",
    ),
    opt("author", "string", "The author recorded in the committed image."),
    opt("message", "string", "The commit message recorded in the committed image."),
    opt("exec_user", "string", "The user provisioning commands run as."),
    opt(
        "fix_upload_owner",
        "bool",
        "Give uploads to the user commands run as, unless root (default true).",
    ),
    opt("login", "bool", "Log in to `login_server` to pull the image."),
    opt("login_server", "string", "The registry to log in to."),
    opt("login_username", "string", "The user name for `login_server`."),
    opt("login_password", "string", "The password for `login_server`."),
    opt(
        "reproducible",
        "bool",
        "Write the image layer and config deterministically (default: when SOURCE_DATE_EPOCH is set).",
    ),
    opt(
        "oci_layout",
        "string",
        "With reproducible output, also write the image as an OCI image layout directory here.",
    ),
    opt("communicator", "string", "Only `docker`."),
];

/// The options as written (see `docs/builders/docker.md`).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Options {
    image: String,
    pull: bool,
    commit: bool,
    export_path: Option<PathBuf>,
    discard: bool,
    changes: Vec<String>,
    run_command: Vec<String>,
    platform: String,
    privileged: bool,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    volumes: BTreeMap<String, String>,
    #[allow(
        dead_code,
        reason = "accepted for Packer compatibility; uploads need no mount"
    )]
    container_dir: Option<String>,
    author: Option<String>,
    message: Option<String>,
    exec_user: Option<String>,
    fix_upload_owner: bool,
    login: bool,
    login_server: Option<String>,
    login_username: Option<String>,
    login_password: Option<String>,
    reproducible: Option<bool>,
    oci_layout: Option<PathBuf>,
    communicator: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: String::new(),
            pull: true,
            commit: false,
            export_path: None,
            discard: false,
            changes: Vec::new(),
            run_command: Vec::new(),
            platform: String::new(),
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            volumes: BTreeMap::new(),
            container_dir: None,
            author: None,
            message: None,
            exec_user: None,
            fix_upload_owner: true,
            login: false,
            login_server: None,
            login_username: None,
            login_password: None,
            reproducible: None,
            oci_layout: None,
            communicator: "docker".to_string(),
        }
    }
}

/// The keep-alive process when `run_command` is not set: it only waits to be removed.
const KEEP_ALIVE: &[&str] = &["/bin/sh", "-c", "while :; do sleep 3600; done"];

/// What to do with the provisioned container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    Commit,
    Export(PathBuf),
    Discard,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub image: String,
    pub pull: bool,
    pub output: Output,
    pub changes: Vec<String>,
    pub run_command: Vec<String>,
    pub platform: String,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub binds: Vec<String>,
    pub author: Option<String>,
    pub message: Option<String>,
    pub exec_user: Option<String>,
    pub fix_upload_owner: bool,
    pub credentials: Option<bollard::auth::DockerCredentials>,
    /// `SOURCE_DATE_EPOCH` when the output is to be reproducible.
    pub source_date_epoch: Option<i64>,
    /// Where to write an OCI image layout too (reproducible output only).
    pub oci_layout: Option<PathBuf>,
}

struct DockerKind;

impl BuilderKind for DockerKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics> {
        let settings = settings(config, std::env::var("SOURCE_DATE_EPOCH").ok())?;
        Ok(Box::new(DockerBuilder { settings }))
    }
}

/// Checks `config`; `epoch` is the `SOURCE_DATE_EPOCH` of the environment.
fn settings(config: &Config, epoch: Option<String>) -> Result<Settings, Diagnostics> {
    let opts: Options = config.decode()?;
    let mut diags = Diagnostics::new();
    if opts.image.is_empty() {
        diags.push(
            Diagnostic::error("the docker builder needs an `image`")
                .at(config.span)
                .with_help("e.g. `image = \"debian:bookworm\"`"),
        );
    }
    let outputs = [
        opts.commit.then_some("commit"),
        opts.export_path.as_ref().map(|_| "export_path"),
        opts.discard.then_some("discard"),
    ];
    let chosen: Vec<&str> = outputs.into_iter().flatten().collect();
    if chosen.len() != 1 {
        let what = if chosen.is_empty() {
            "none is set".to_string()
        } else {
            format!("{} are set", chosen.join(" and "))
        };
        let at = chosen.get(1).copied().unwrap_or("commit");
        diags.push(
            Diagnostic::error(format!(
                "set exactly one of `commit`, `export_path` and `discard`; {what}"
            ))
            .at(config.span_of(at)),
        );
    }
    if opts.communicator != "docker" {
        diags.push(
            Diagnostic::error(format!(
                "the docker builder does not support the `{}` communicator",
                opts.communicator
            ))
            .at(config.span_of("communicator"))
            .with_label("allowed values: `docker`"),
        );
    }
    if opts.run_command.first().is_some_and(|a| a.starts_with('-')) {
        diags.push(
            Diagnostic::error("`run_command` is the container's command, not `docker run` flags")
                .at(config.span_of("run_command"))
                .with_help(
                    "Kiln starts the container through the Engine API; give the keep-alive \
                     command itself, e.g. `[\"/bin/sh\", \"-c\", \"sleep infinity\"]`",
                ),
        );
    }
    let credentials = if opts.login {
        if opts.login_server.is_none() {
            diags.push(
                Diagnostic::error("`login = true` needs `login_server`")
                    .at(config.span_of("login")),
            );
        }
        Some(bollard::auth::DockerCredentials {
            username: opts.login_username.clone(),
            password: opts.login_password.clone(),
            serveraddress: opts.login_server.clone(),
            ..Default::default()
        })
    } else {
        None
    };
    let epoch = match epoch.filter(|e| !e.is_empty()) {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => {
                diags.push(Diagnostic::error(format!(
                    "`SOURCE_DATE_EPOCH` must be a number of seconds, not `{text}`"
                )));
                None
            }
        },
    };
    let source_date_epoch = match opts.reproducible {
        Some(false) => None,
        Some(true) => Some(epoch.unwrap_or(0)),
        None => epoch,
    };
    if source_date_epoch.is_some() && opts.export_path.is_some() {
        // An export is the container's filesystem as tar; reproducibility applies to images.
        diags.push(
            Diagnostic::error("`reproducible` output applies to `commit`, not `export_path`")
                .at(config.span_of("reproducible")),
        );
    }
    if opts.oci_layout.is_some() && (source_date_epoch.is_none() || !opts.commit) {
        diags.push(
            Diagnostic::error("`oci_layout` needs reproducible output and `commit = true`")
                .at(config.span_of("oci_layout"))
                .with_help("set `reproducible = true` (or `SOURCE_DATE_EPOCH`)"),
        );
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let output = match (opts.commit, opts.export_path, opts.discard) {
        (true, _, _) => Output::Commit,
        (_, Some(path), _) => Output::Export(path),
        _ => Output::Discard,
    };
    Ok(Settings {
        image: opts.image,
        pull: opts.pull,
        output,
        changes: opts.changes,
        run_command: if opts.run_command.is_empty() {
            KEEP_ALIVE.iter().map(|s| s.to_string()).collect()
        } else {
            opts.run_command
        },
        platform: opts.platform,
        privileged: opts.privileged,
        cap_add: opts.cap_add,
        cap_drop: opts.cap_drop,
        binds: opts
            .volumes
            .into_iter()
            .map(|(host, container)| format!("{host}:{container}"))
            .collect(),
        author: opts.author,
        message: opts.message,
        exec_user: opts.exec_user,
        fix_upload_owner: opts.fix_upload_owner,
        credentials,
        source_date_epoch,
        oci_layout: opts.oci_layout,
    })
}

struct DockerBuilder {
    settings: Settings,
}

#[async_trait]
impl Builder for DockerBuilder {
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        steps::run(&self.settings, ctx, hook).await
    }
}

#[cfg(test)]
mod tests;
