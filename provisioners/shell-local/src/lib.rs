//! The `shell-local` provisioner and post-processor: run a command, inline lines or scripts on the
//! machine running Kiln (not on the machine being built), as Packer's `shell-local` does.

mod config;
mod exec;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::artifact::Artifact;
use kiln_core::component::{
    OptionSpec, PostProcessed, PostProcessor, PostProcessorKind, ProvisionCtx, Provisioner,
    ProvisionerKind, Registry,
};
use kiln_core::diag::Diagnostics;
use kiln_core::plan::Config;
use kiln_core::runner::BuildCtx;

use config::Settings;
pub use exec::ShellLocalError;

/// The type name in templates.
pub const TYPE_NAME: &str = "shell-local";

/// Adds the `shell-local` provisioner and post-processor.
pub fn register(registry: &mut Registry) {
    registry.add_provisioner(Arc::new(ShellLocalProvisionerKind));
    registry.add_post_processor(Arc::new(ShellLocalPostProcessorKind));
}

macro_rules! common_options {
    ($($extra:expr),* $(,)?) => {
        &[
            OptionSpec { name: "command", ty: "string", required: false,
                doc: "A single command to run; it is written to a temporary script like `inline`." },
            OptionSpec { name: "inline", ty: "list(string)", required: false,
                doc: "Commands written one per line to a temporary script that is then run." },
            OptionSpec { name: "script", ty: "string", required: false,
                doc: "Path of a local script to run." },
            OptionSpec { name: "scripts", ty: "list(string)", required: false,
                doc: "Paths of local scripts to run, in order." },
            OptionSpec { name: "environment_vars", ty: "list(string)", required: false,
                doc: "Extra environment variables as `KEY=VALUE` strings." },
            OptionSpec { name: "env", ty: "map(string)", required: false,
                doc: "Extra environment variables as a map; wins over `environment_vars`." },
            OptionSpec { name: "execute_command", ty: "list(string)", required: false,
                doc: "The command line that runs each script; `{{.Vars}}` and `{{.Script}}` are replaced." },
            OptionSpec { name: "inline_shebang", ty: "string", required: false,
                doc: "The interpreter line written at the top of the script made from `inline` or `command`." },
            OptionSpec { name: "only_on", ty: "list(string)", required: false,
                doc: "Run only when the local operating system is one of these (`linux`, `darwin`, ...)." },
            OptionSpec { name: "valid_exit_codes", ty: "list(number)", required: false,
                doc: "Exit codes that count as success." },
            OptionSpec { name: "tempfile_extension", ty: "string", required: false,
                doc: "File extension of the temporary script made from `inline` or `command`." },
            OptionSpec { name: "use_linux_pathing", ty: "bool", required: false,
                doc: "Accepted for compatibility with Packer templates; has no effect on Linux." },
            $($extra),*
        ]
    };
}

const PROVISIONER_OPTIONS: &[OptionSpec] = common_options!();

const POST_PROCESSOR_OPTIONS: &[OptionSpec] = common_options!(OptionSpec {
    name: "keep_input_artifact",
    ty: "bool",
    required: false,
    doc: "Accepted for compatibility; the input artifact is always passed on and kept.",
});

/// The environment every run gets, before the user's variables.
fn default_env(ctx: &BuildCtx) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PACKER_BUILD_NAME".to_string(), ctx.source_name.clone()),
        ("PACKER_BUILDER_TYPE".to_string(), ctx.source_type.clone()),
        ("KILN_BUILD_NAME".to_string(), ctx.build_name.clone()),
        ("KILN_RUN_ID".to_string(), ctx.run_id.to_string()),
    ])
}

struct ShellLocalProvisionerKind;

impl ProvisionerKind for ShellLocalProvisionerKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        PROVISIONER_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        Ok(Box::new(ShellLocalProvisioner(Settings::from_config(
            config,
        )?)))
    }
}

struct ShellLocalProvisioner(Settings);

#[async_trait]
impl Provisioner for ShellLocalProvisioner {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        let mut env = default_env(ctx.build);
        if let Some(addr) = &ctx.conn.http_addr {
            env.insert("PACKER_HTTP_ADDR".to_string(), addr.clone());
        }
        exec::run(&self.0, ctx.build, env).await?;
        Ok(())
    }

    /// The process group gets SIGTERM when the build is cancelled (and SIGKILL when hurried).
    fn stops_on_cancel(&self) -> bool {
        true
    }
}

struct ShellLocalPostProcessorKind;

impl PostProcessorKind for ShellLocalPostProcessorKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        POST_PROCESSOR_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        Ok(Box::new(ShellLocalPostProcessor(Settings::from_config(
            config,
        )?)))
    }
}

struct ShellLocalPostProcessor(Settings);

#[async_trait]
impl PostProcessor for ShellLocalPostProcessor {
    async fn process(
        &self,
        ctx: &BuildCtx,
        input: Artifact,
    ) -> Result<PostProcessed, kiln_core::BoxError> {
        exec::run(&self.0, ctx, default_env(ctx)).await?;
        // Like Packer, shell-local passes its input on unchanged, so it is always kept.
        Ok(PostProcessed {
            artifact: input,
            keep_input: true,
        })
    }
}

#[cfg(test)]
mod tests;
