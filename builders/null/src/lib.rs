//! The `null` builder: no machine at all. It hands provisioners a communicator and produces an
//! empty artifact, so that `shell-local` provisioners and post-processors can run on their own.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_comm::NoneCommunicator;
use kiln_core::artifact::Artifact;
use kiln_core::component::{Builder, BuilderKind, ConnInfo, OptionSpec, ProvisionHook, Registry};
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use kiln_core::runner::{run_steps, BuildCtx, BuildError, Step};
use serde::Deserialize;

/// The type name in templates.
pub const TYPE_NAME: &str = "null";

/// The artifact id, as Packer's null builder reports it.
pub const ARTIFACT_ID: &str = "Null";

/// Communicators the null builder accepts.
const COMMUNICATORS: &[&str] = &["none"];

/// Adds the `null` builder.
pub fn register(registry: &mut Registry) {
    registry.add_builder(Arc::new(NullKind));
}

const OPTIONS: &[OptionSpec] = &[OptionSpec {
    name: "communicator",
    ty: "string",
    required: false,
    doc: "How provisioners reach the machine; only `none` for now.",
}];

/// The options as written (see `docs/builders/null.md`).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Options {
    communicator: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            communicator: "none".to_string(),
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
            let mut d = Diagnostic::error(format!(
                "the null builder does not support the `{}` communicator",
                opts.communicator
            ))
            .at(config.span_of("communicator"))
            .with_label(format!("allowed values: {allowed}"));
            if opts.communicator == "ssh" {
                d = d.with_help("the SSH communicator is not available in Kiln yet; use `none`");
            }
            return Err(d.into());
        }
        Ok(Box::new(NullBuilder))
    }
}

struct NullBuilder;

/// What the null builder's steps share.
#[derive(Default)]
struct NullState {
    comm: Option<NoneCommunicator>,
    conn: ConnInfo,
}

/// Sets up the communicator (for now always `none`).
struct Connect;

#[async_trait]
impl Step<NullState> for Connect {
    fn name(&self) -> &str {
        "connect"
    }

    async fn run(&self, state: &mut NullState, _: &BuildCtx) -> Result<(), kiln_core::BoxError> {
        state.conn = ConnInfo {
            conn_type: "none".to_string(),
            ..ConnInfo::default()
        };
        state.comm = Some(NoneCommunicator);
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

    async fn run(&self, state: &mut NullState, ctx: &BuildCtx) -> Result<(), kiln_core::BoxError> {
        let comm = state
            .comm
            .as_ref()
            .expect("the connect step runs before provision");
        self.hook.provision(ctx, &state.conn, comm).await?;
        Ok(())
    }
}

#[async_trait]
impl Builder for NullBuilder {
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        let mut state = NullState::default();
        run_steps(&[&Connect, &Provision { hook }], &mut state, ctx).await?;
        Ok(Artifact {
            builder_type: TYPE_NAME.to_string(),
            id: ARTIFACT_ID.to_string(),
            ..Artifact::default()
        })
    }
}

#[cfg(test)]
mod tests;
