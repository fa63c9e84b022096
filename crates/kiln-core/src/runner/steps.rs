//! `Step`, the cleanup stack and `run_steps`.

use std::time::Duration;

use async_trait::async_trait;

use super::{BuildCtx, BuildError};

/// Something a failed or aborted build leaves in place, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub what: String,
    pub how_to_reach: Option<String>,
}

/// What cleanups get: the build context, a deadline, and the `hurry` token.
pub struct CleanupCtx<'a> {
    pub build: &'a BuildCtx,
    /// Cleanups should finish within this; the runner reports a cleanup that overruns it.
    pub deadline: Duration,
    /// True when the step's `run` failed or was cancelled (or a later step failed).
    pub failed: bool,
}

/// One step of a builder over its typed state `S`.
#[async_trait]
pub trait Step<S: Send>: Send + Sync {
    /// Short name for events and errors, e.g. `launch vm`.
    fn name(&self) -> &str;

    /// Does the work. May be dropped at any await point when the build is cancelled, so it must
    /// record what it acquires in `state` as soon as it exists (or before).
    async fn run(&self, state: &mut S, ctx: &BuildCtx) -> Result<(), crate::BoxError>;

    /// Undoes what `run` did, as far as `state` says it got. Called exactly once for every step
    /// whose `run` was started, in reverse order, unless the build is aborted.
    async fn cleanup(&self, _state: &mut S, _ctx: &CleanupCtx<'_>) -> Result<(), crate::BoxError> {
        Ok(())
    }

    /// What this step left in place, for `-on-error=abort` and failed cleanups.
    fn leftovers(&self, _state: &S) -> Vec<Leftover> {
        Vec::new()
    }
}

/// Runs `steps` in order over `state`; see the module docs for the cleanup contract.
pub async fn run_steps<S: Send>(
    steps: &[&dyn Step<S>],
    state: &mut S,
    ctx: &BuildCtx,
) -> Result<(), BuildError> {
    let _ = (steps, state, ctx);
    todo!("runner helper")
}
