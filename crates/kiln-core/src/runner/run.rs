//! Running a whole plan: builds concurrently up to `parallel_builds`, each through its builder,
//! provisioners and post-processor chains.

use std::sync::Arc;

use crate::artifact::Artifact;
use crate::component::Registry;
use crate::event::EventSink;
use crate::plan::BuildPlan;

use super::{Asker, Cancel, OnError};

/// How to run a plan.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// At most this many builds at once; 0 means no limit.
    pub parallel_builds: usize,
    pub on_error: OnError,
    pub asker: Option<Arc<dyn Asker>>,
    pub force: bool,
    pub cancel: Cancel,
}

/// How one build ended.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub name: String,
    pub ok: bool,
    pub cancelled: bool,
    /// The error and its causes, one per element, outermost first.
    pub error: Vec<String>,
    /// Artifacts left at the end of the post-processor chains (or the builder's, without any).
    pub artifacts: Vec<Artifact>,
}

/// How the whole run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub builds: Vec<BuildOutcome>,
    pub cancelled: bool,
}

impl RunSummary {
    pub fn ok(&self) -> bool {
        !self.cancelled && self.builds.iter().all(|b| b.ok)
    }
}

/// Runs every build of `plan`, emitting events to `events`. Returns when every build and its
/// cleanups have finished.
pub async fn run_plan(
    plan: &BuildPlan,
    registry: &Registry,
    opts: RunOptions,
    events: EventSink,
) -> RunSummary {
    let _ = (plan, registry, opts, events);
    todo!("runner helper")
}
