//! The build runner: typed steps with a cleanup stack, cancellation, error policies, and the
//! concurrent execution of a [`BuildPlan`](crate::plan::BuildPlan).
//!
//! A builder is a list of [`Step`]s over a state struct of its own (no string-keyed state bag).
//! [`run_steps`] pushes each step on the cleanup stack *before* running it, so a step that fails
//! half-way is cleaned up too; cleanups run in reverse order under their own deadline, never
//! under the cancelled token.
//!
//! [`run_plan`] runs the builds of a plan concurrently; for each it configures the builder, hands
//! it a [`ProvisionHook`](crate::component::ProvisionHook) that runs the build's provisioners
//! (`provision.rs`), then runs the post-processor chains.

mod cancel;
mod provision;
mod run;
mod steps;

pub use cancel::Cancel;
pub use run::{run_plan, BuildOutcome, RunOptions, RunSummary};
pub use steps::{run_steps, CleanupCtx, CleanupError, Leftover, Step, CLEANUP_DEADLINE};

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use crate::event::EventSink;

/// What to do when a build fails (`-on-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Run every cleanup (the default).
    #[default]
    Cleanup,
    /// Leave everything in place and report what is left and how to reach it.
    Abort,
    /// Ask the [`Asker`] what to do.
    Ask,
    /// Run the build's `error-cleanup-provisioner`, then leave everything as with `Abort`.
    RunCleanupProvisioner,
}

/// The user's answer to an `-on-error=ask` question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskAnswer {
    Cleanup,
    Abort,
    /// Run the failed step (or provisioner) again; the build may still fail.
    Retry,
}

/// Asks the user what to do after a failure (`-on-error=ask`); implemented by the CLI.
pub trait Asker: Send + Sync {
    fn ask(&self, build: &str, error: &str) -> AskAnswer;
}

/// Everything a build's steps and components get from the runner.
#[derive(Clone)]
pub struct BuildCtx {
    pub run_id: Uuid,
    /// The build's name, `BUILD.TYPE.NAME` or `TYPE.NAME`.
    pub build_name: String,
    pub source_type: String,
    pub source_name: String,
    pub events: EventSink,
    pub cancel: Cancel,
    pub on_error: OnError,
    pub asker: Option<Arc<dyn Asker>>,
    /// The template's directory (`path.root`); relative paths in configs are resolved from the
    /// current directory, as Packer does.
    pub template_dir: PathBuf,
    /// `-force`: builders may replace existing output.
    pub force: bool,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("step `{step}` failed")]
    Step {
        step: String,
        #[source]
        source: crate::BoxError,
    },
    #[error("{what} failed")]
    Provisioner {
        /// e.g. `provisioner 2 (shell-local) at build.pkr.hcl:12:3`
        what: String,
        #[source]
        source: crate::BoxError,
    },
    #[error("post-processor {what} failed")]
    PostProcessor {
        what: String,
        #[source]
        source: crate::BoxError,
    },
    #[error("invalid configuration")]
    Config(#[source] crate::diag::Diagnostics),
    #[error("cancelled")]
    Cancelled,
    #[error("cleanup failed; these may be left behind: {}", left_behind.join(", "))]
    Cleanup {
        left_behind: Vec<String>,
        #[source]
        source: crate::BoxError,
    },
}

impl BuildError {
    /// True when the build stopped because it was cancelled (possibly inside a step).
    pub fn is_cancelled(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = cur {
            if matches!(
                err.downcast_ref::<BuildError>(),
                Some(BuildError::Cancelled)
            ) {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

/// An error and its causes, one message per element, outermost first.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        chain.push(e.to_string());
        cur = e.source();
    }
    chain
}

/// Whether the user answered `-on-error=ask` with "retry" for `err` (never after a
/// cancellation). Any other answer is kept by the build's asker, so the caller's next question
/// gets it without asking again.
pub(crate) async fn asks_retry(ctx: &BuildCtx, err: &BuildError) -> bool {
    ctx.on_error == OnError::Ask && on_error_answer(ctx, err).await == AskAnswer::Retry
}

/// What the `on_error` policy says to do after `error`: clean up or leave things in place.
/// `Ask` asks the build's [`Asker`] (cleanup when there is none), except after a cancellation:
/// the user already said to stop, so the build cleans up without a question.
pub(crate) async fn on_error_answer(ctx: &BuildCtx, error: &BuildError) -> AskAnswer {
    match ctx.on_error {
        OnError::Cleanup => AskAnswer::Cleanup,
        OnError::Abort | OnError::RunCleanupProvisioner => AskAnswer::Abort,
        OnError::Ask if error.is_cancelled() => AskAnswer::Cleanup,
        OnError::Ask => {
            let Some(asker) = ctx.asker.clone() else {
                return AskAnswer::Cleanup;
            };
            let build = ctx.build_name.clone();
            let text = ctx.events.redactor().redact(&error_chain(error).join(": "));
            // The asker blocks on the terminal; keep it off the runtime's worker threads.
            tokio::task::spawn_blocking(move || asker.ask(&build, &text))
                .await
                .unwrap_or(AskAnswer::Cleanup)
        }
    }
}
