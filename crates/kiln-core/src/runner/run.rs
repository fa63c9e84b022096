//! Running a whole plan: builds concurrently up to `parallel_builds`, each through its builder,
//! provisioners and post-processor chains.
//!
//! Per build: `BuildStarted`; the builder's body is evaluated with `build.PackerRunUUID` (other
//! `build.*` values are empty), configured and run with the [`Provisioners`] hook; the builder's
//! artifact (`ArtifactProduced`) then goes through each post-processor chain, every post-processor
//! getting the previous one's artifact; `BuildFinished`. A post-processor's input is kept in the
//! build's artifacts when its `keep_input_artifact` (or, unset, the post-processor's own answer)
//! says so; the builder's artifact is kept when the first post-processor of any chain keeps it,
//! or when there are no post-processors. The end of every chain is kept.
//!
//! On cancellation no new build starts; running builds stop and clean up per their policy.
//! Builds that never started are reported as cancelled, without events of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::provision::Provisioners;
use super::{error_chain, AskAnswer, Asker, BuildCtx, BuildError, Cancel, OnError};
use crate::artifact::Artifact;
use crate::component::Registry;
use crate::diag::{Diagnostic, Diagnostics};
use crate::event::{EventKind, EventSink};
use crate::plan::{Build, BuildPlan, PostProcessorSpec, RuntimeVars};

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
    let start = Instant::now();
    events.add_secrets(plan.sensitive_values.iter().cloned());
    events.emit(EventKind::RunStarted {
        builds: plan.builds.iter().map(|b| b.name.clone()).collect(),
        kiln_version: crate::VERSION.to_string(),
    });
    let cancel = opts.cancel.cancel.clone();
    let limit = match opts.parallel_builds {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    };
    let semaphore = Arc::new(Semaphore::new(limit));
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        registry: registry.clone(),
        opts,
        events: events.clone(),
    });

    let mut outcomes: Vec<Option<BuildOutcome>> = vec![None; plan.builds.len()];
    let mut tasks = JoinSet::new();
    let mut task_build = HashMap::new();
    for index in 0..plan.builds.len() {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let shared = shared.clone();
        let task = tasks.spawn(async move {
            let _permit = permit;
            shared.run_build(index).await
        });
        task_build.insert(task.id(), index);
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((id, outcome)) => outcomes[task_build[&id]] = Some(outcome),
            Err(err) => {
                let build = &plan.builds[task_build[&err.id()]];
                let error = format!("internal error: the build's task failed: {err}");
                events
                    .for_build(&build.name)
                    .emit(EventKind::BuildFinished {
                        ok: false,
                        cancelled: false,
                        duration_ms: 0,
                        error: Some(error.clone()),
                    });
                outcomes[task_build[&err.id()]] = Some(BuildOutcome {
                    name: build.name.clone(),
                    ok: false,
                    cancelled: false,
                    error: vec![error],
                    artifacts: Vec::new(),
                });
            }
        }
    }

    let builds: Vec<BuildOutcome> = outcomes
        .into_iter()
        .zip(&plan.builds)
        .map(|(outcome, build)| {
            outcome.unwrap_or_else(|| BuildOutcome {
                name: build.name.clone(),
                ok: false,
                cancelled: true,
                error: vec![BuildError::Cancelled.to_string()],
                artifacts: Vec::new(),
            })
        })
        .collect();
    let summary = RunSummary {
        cancelled: cancel.is_cancelled(),
        builds,
    };
    let builds_ok = summary.builds.iter().filter(|b| b.ok).count();
    events.emit(EventKind::RunFinished {
        ok: summary.ok(),
        builds_ok,
        builds_failed: summary.builds.len() - builds_ok,
        cancelled: summary.cancelled,
        duration_ms: start.elapsed().as_millis() as u64,
    });
    summary
}

/// What every build task needs, owned so that tasks can be spawned.
struct Shared {
    plan: BuildPlan,
    registry: Registry,
    opts: RunOptions,
    events: EventSink,
}

impl Shared {
    async fn run_build(&self, index: usize) -> BuildOutcome {
        let build = &self.plan.builds[index];
        let events = self.events.for_build(&build.name);
        events.emit(EventKind::BuildStarted {
            builder_type: build.source_type.clone(),
        });
        let start = Instant::now();
        let ctx = BuildCtx {
            run_id: events.run_id(),
            build_name: build.name.clone(),
            source_type: build.source_type.clone(),
            source_name: build.source_name.clone(),
            events: events.clone(),
            cancel: self.opts.cancel.clone(),
            on_error: self.opts.on_error,
            asker: self.opts.asker.clone().map(|inner| {
                Arc::new(AskOnce {
                    inner,
                    answer: Mutex::new(None),
                }) as Arc<dyn Asker>
            }),
            template_dir: self.plan.root.clone(),
            force: self.opts.force,
        };
        let result = self.build_and_post_process(build, &ctx).await;
        let redactor = events.redactor();
        let (cancelled, error, artifacts) = match result {
            Ok(artifacts) => (false, Vec::new(), artifacts),
            Err(err) => (
                err.is_cancelled(),
                error_chain(&err)
                    .iter()
                    .map(|e| redactor.redact(e))
                    .collect(),
                Vec::new(),
            ),
        };
        events.emit(EventKind::BuildFinished {
            ok: error.is_empty(),
            cancelled,
            duration_ms: start.elapsed().as_millis() as u64,
            error: (!error.is_empty()).then(|| error.join(": ")),
        });
        BuildOutcome {
            name: build.name.clone(),
            ok: error.is_empty(),
            cancelled,
            error,
            artifacts,
        }
    }

    fn runtime_vars(&self, ctx: &BuildCtx) -> RuntimeVars {
        RuntimeVars {
            values: [("PackerRunUUID".to_string(), ctx.run_id.to_string())].into(),
        }
    }

    async fn build_and_post_process(
        &self,
        build: &Build,
        ctx: &BuildCtx,
    ) -> Result<Vec<Artifact>, BuildError> {
        let spec = &build.builder;
        let config = spec
            .body
            .evaluate(
                &build.scope,
                Some(&self.runtime_vars(ctx)),
                &build.source_type,
            )
            .map_err(BuildError::Config)?;
        let kind = self
            .registry
            .builders
            .get(build.source_type.as_str())
            .ok_or_else(|| {
                BuildError::Config(
                    Diagnostic::error(format!("unknown builder type `{}`", build.source_type))
                        .at(spec.span)
                        .into(),
                )
            })?;
        let builder = config
            .conform(kind.options())
            .and_then(|config| kind.configure(&config))
            .map_err(BuildError::Config)?;
        if ctx.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let hook = Provisioners {
            build,
            registry: &self.registry,
            sources: &self.plan.sources,
        };
        let artifact = builder.run(ctx, &hook).await?;
        ctx.events.emit(EventKind::ArtifactProduced {
            artifact: artifact.clone(),
        });
        if build.post_processors.is_empty() {
            return Ok(vec![artifact]);
        }

        let mut kept = Vec::new();
        let mut keep_builder_artifact = false;
        for (c, chain) in build.post_processors.iter().enumerate() {
            let mut input = artifact.clone();
            for (p, spec) in chain.iter().enumerate() {
                let label = format!(
                    "post-processor {}.{} ({})",
                    c + 1,
                    p + 1,
                    spec.component.kind
                );
                let (output, keep_input) =
                    self.post_process(&label, spec, build, ctx, &input).await?;
                let handed_on = output == input;
                if p == 0 {
                    keep_builder_artifact |= keep_input;
                } else if keep_input {
                    kept.push(input);
                }
                // A post-processor that hands its input on (manifest, shell-local) produced
                // nothing new: announcing the same artifact again would only repeat it.
                if !handed_on {
                    ctx.events.emit(EventKind::ArtifactProduced {
                        artifact: output.clone(),
                    });
                }
                input = output;
            }
            kept.push(input);
        }
        if keep_builder_artifact {
            kept.insert(0, artifact);
        }
        Ok(kept)
    }

    /// Runs one post-processor between `StepStarted` and `StepFinished` events; returns its
    /// artifact and whether to keep its input.
    async fn post_process(
        &self,
        label: &str,
        spec: &PostProcessorSpec,
        build: &Build,
        ctx: &BuildCtx,
        input: &Artifact,
    ) -> Result<(Artifact, bool), BuildError> {
        if ctx.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        ctx.events.emit(EventKind::StepStarted {
            step: label.to_string(),
        });
        let start = Instant::now();
        let result = self.configure_and_process(spec, build, ctx, input).await;
        ctx.events.emit(EventKind::StepFinished {
            step: label.to_string(),
            duration_ms: start.elapsed().as_millis() as u64,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|err| match err {
                BuildError::PostProcessor { source, .. } => error_chain(source.as_ref()).join(": "),
                other => error_chain(other).join(": "),
            }),
        });
        let processed = result?;
        let keep = spec.keep_input_artifact.unwrap_or(processed.keep_input);
        Ok((processed.artifact, keep))
    }

    async fn configure_and_process(
        &self,
        spec: &PostProcessorSpec,
        build: &Build,
        ctx: &BuildCtx,
        input: &Artifact,
    ) -> Result<crate::component::PostProcessed, BuildError> {
        let c = &spec.component;
        let fail = |source: crate::BoxError| {
            let name = c
                .name
                .as_ref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            BuildError::PostProcessor {
                what: format!("{}{name} at {}", c.kind, self.plan.sources.location(c.span)),
                source,
            }
        };
        let config = c
            .body
            .evaluate(&build.scope, Some(&self.runtime_vars(ctx)), &c.kind)
            .map_err(|d| fail(Box::new(d)))?;
        let kind = self
            .registry
            .post_processors
            .get(c.kind.as_str())
            .ok_or_else(|| {
                fail(Box::new(Diagnostics::from(
                    Diagnostic::error(format!("unknown post-processor type `{}`", c.kind))
                        .at(c.span),
                )))
            })?;
        let post_processor = config
            .conform(kind.options())
            .and_then(|config| kind.configure(&config))
            .map_err(|d| fail(Box::new(d)))?;
        tokio::select! {
            biased;
            _ = ctx.cancel.cancel.cancelled() => Err(BuildError::Cancelled),
            r = post_processor.process(ctx, input.clone()) => r.map_err(fail),
        }
    }
}

/// Asks the user at most once per build: the provision hook and the step runner both consult
/// the `on_error` policy after one failure, and must get the same answer. `Retry` is not kept:
/// a retried step that fails again asks again.
struct AskOnce {
    inner: Arc<dyn Asker>,
    answer: Mutex<Option<AskAnswer>>,
}

impl Asker for AskOnce {
    fn ask(&self, build: &str, error: &str) -> AskAnswer {
        let mut answer = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = *answer {
            return kept;
        }
        let given = self.inner.ask(build, error);
        if given != AskAnswer::Retry {
            *answer = Some(given);
        }
        given
    }
}
