//! `Step`, the cleanup stack and `run_steps`.
//!
//! The contract of [`run_steps`]:
//!
//! - A step is pushed on the cleanup stack *before* its `run` starts, so a step that fails or is
//!   cancelled half-way is cleaned up too. Steps that never started are never cleaned up.
//! - `run` is raced against the build's cancel token; a cancelled `run` future is dropped at its
//!   current await point and the build fails with [`BuildError::Cancelled`].
//! - After success every cleanup runs, in reverse order, with [`CleanupCtx::failed`] false (as in
//!   Packer): a step whose result must survive (an output file) keeps it when `!failed`.
//! - After a failure or a cancellation the build's [`OnError`] policy decides: `Cleanup` runs
//!   every cleanup in reverse with `failed` true; `Abort` and `RunCleanupProvisioner` run none and
//!   emit a `Leftover` event for every [`Step::leftovers`] of the started steps; `Ask` asks the
//!   [`Asker`](super::Asker) (cleanup without one, and without asking after a cancellation).
//! - Each cleanup runs under its own deadline ([`CLEANUP_DEADLINE`]), not under the cancel token.
//!   A cleanup that fails or overruns does not stop the others; it is reported with a failed
//!   `CleanupFinished` event and a `Leftover` event per leftover of that step.
//! - Result: the build's own error when the build failed (the cleanup failures are then reported
//!   by those events and an error `Message` with the [`BuildError::Cleanup`] chain, the original
//!   error staying the primary one); otherwise
//!   [`BuildError::Cleanup`] when a cleanup failed, naming what may be left behind; else `Ok`.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::cancel::unless_cancelled;
use super::{asks_retry, error_chain, on_error_answer, AskAnswer, BuildCtx, BuildError};
use crate::event::{EventKind, Level};

/// How long each cleanup may take before the runner gives up on it and reports its leftovers.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(5 * 60);

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

    /// Whether `run` watches `ctx.cancel` and returns soon after a cancellation, having stopped
    /// its own work (a step that runs the provisioners through the [`ProvisionHook`]). The runner
    /// then waits for it, until the build is hurried, instead of dropping it at once.
    ///
    /// [`ProvisionHook`]: crate::component::ProvisionHook
    fn stops_on_cancel(&self) -> bool {
        false
    }

    /// What this step left in place, for `-on-error=abort` and failed cleanups.
    fn leftovers(&self, _state: &S) -> Vec<Leftover> {
        Vec::new()
    }
}

/// Why one step's cleanup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cleanup of step `{step}` failed")]
    Failed {
        step: String,
        #[source]
        source: crate::BoxError,
    },
    #[error("cleanup of step `{step}` did not finish within {deadline:?}")]
    Overran { step: String, deadline: Duration },
}

/// Runs `steps` in order over `state`; see the module docs for the cleanup contract.
pub async fn run_steps<S: Send>(
    steps: &[&dyn Step<S>],
    state: &mut S,
    ctx: &BuildCtx,
) -> Result<(), BuildError> {
    run_steps_within(steps, state, ctx, CLEANUP_DEADLINE).await
}

/// [`run_steps`] with a given cleanup deadline.
async fn run_steps_within<S: Send>(
    steps: &[&dyn Step<S>],
    state: &mut S,
    ctx: &BuildCtx,
    deadline: Duration,
) -> Result<(), BuildError> {
    // The cleanup stack is `steps[..started]`: a step counts as started before its run begins.
    let mut started = 0;
    let mut outcome = Ok(());
    'steps: for step in steps {
        if ctx.cancel.is_cancelled() {
            outcome = Err(BuildError::Cancelled);
            break;
        }
        started += 1;
        loop {
            match run_one(*step, state, ctx).await {
                Ok(()) => break,
                // `-on-error=ask` answered "retry": run the same step again, its cleanup still
                // registered once.
                Err(err) if asks_retry(ctx, &err).await => {
                    ctx.events
                        .message(Level::Warn, format!("retrying step `{}`", step.name()));
                }
                Err(err) => {
                    outcome = Err(err);
                    break 'steps;
                }
            }
        }
    }
    let stack = &steps[..started];
    let Err(err) = outcome else {
        return cleanup_all(stack, state, ctx, deadline, false).await;
    };
    match on_error_answer(ctx, &err).await {
        // The run's asker keeps the answer given where the step failed, which is never `Retry`;
        // an asker that answers `Retry` again gets a cleanup.
        AskAnswer::Cleanup | AskAnswer::Retry => {
            // The build's error stays the primary one; a cleanup failure on top of it is
            // reported here (besides its `CleanupFinished` and `Leftover` events).
            if let Err(cleanup) = cleanup_all(stack, state, ctx, deadline, true).await {
                ctx.events
                    .message(Level::Error, error_chain(&cleanup).join(": "));
            }
        }
        AskAnswer::Abort => {
            for step in stack {
                report_leftovers(*step, state, ctx);
            }
        }
    }
    Err(err)
}

async fn run_one<S: Send>(
    step: &dyn Step<S>,
    state: &mut S,
    ctx: &BuildCtx,
) -> Result<(), BuildError> {
    let name = step.name();
    ctx.events.emit(EventKind::StepStarted {
        step: name.to_string(),
    });
    let start = Instant::now();
    let result =
        match unless_cancelled(step.run(state, ctx), step.stops_on_cancel(), &ctx.cancel).await {
            None => Err(BuildError::Cancelled),
            Some(r) => r.map_err(|source| BuildError::Step {
                step: name.to_string(),
                source,
            }),
        };
    let error = result.as_ref().err().map(|err| match err {
        BuildError::Step { source, .. } => error_chain(source.as_ref()).join(": "),
        other => error_chain(other).join(": "),
    });
    ctx.events.emit(EventKind::StepFinished {
        step: name.to_string(),
        duration_ms: start.elapsed().as_millis() as u64,
        ok: result.is_ok(),
        error,
    });
    result
}

/// Runs the cleanups of `stack` in reverse; every one runs, whatever the others did.
async fn cleanup_all<S: Send>(
    stack: &[&dyn Step<S>],
    state: &mut S,
    ctx: &BuildCtx,
    deadline: Duration,
    failed: bool,
) -> Result<(), BuildError> {
    let cx = CleanupCtx {
        build: ctx,
        deadline,
        failed,
    };
    let mut left_behind = Vec::new();
    let mut first_error = None;
    for step in stack.iter().rev() {
        let name = step.name().to_string();
        ctx.events
            .emit(EventKind::CleanupStarted { step: name.clone() });
        let result = match tokio::time::timeout(deadline, step.cleanup(state, &cx)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(CleanupError::Failed {
                step: name.clone(),
                source,
            }),
            Err(_) => Err(CleanupError::Overran {
                step: name.clone(),
                deadline,
            }),
        };
        ctx.events.emit(EventKind::CleanupFinished {
            step: name.clone(),
            ok: result.is_ok(),
            error: result.as_ref().err().map(|err| match err {
                CleanupError::Failed { source, .. } => error_chain(source.as_ref()).join(": "),
                CleanupError::Overran { deadline, .. } => {
                    format!("did not finish within {deadline:?}")
                }
            }),
        });
        if let Err(err) = result {
            let leftovers = report_leftovers(*step, state, ctx);
            if leftovers.is_empty() {
                left_behind.push(format!("what step `{name}` created"));
            }
            left_behind.extend(leftovers.into_iter().map(|l| l.what));
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        None => Ok(()),
        Some(err) => Err(BuildError::Cleanup {
            left_behind,
            source: Box::new(err),
        }),
    }
}

/// Emits a `Leftover` event for each of `step`'s leftovers and returns them.
fn report_leftovers<S: Send>(step: &dyn Step<S>, state: &S, ctx: &BuildCtx) -> Vec<Leftover> {
    let leftovers = step.leftovers(state);
    for l in &leftovers {
        ctx.events.emit(EventKind::Leftover {
            what: l.what.clone(),
            how_to_reach: l.how_to_reach.clone(),
        });
    }
    leftovers
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::event::{EventSink, Redactor};
    use crate::runner::{Cancel, OnError};

    /// The context of a build `null.a`.
    fn test_ctx(
        events: EventSink,
        on_error: OnError,
        asker: Option<std::sync::Arc<dyn crate::runner::Asker>>,
    ) -> BuildCtx {
        BuildCtx {
            run_id: uuid::Uuid::nil(),
            build_name: "null.a".to_string(),
            source_type: "null".to_string(),
            source_name: "a".to_string(),
            events,
            cancel: Cancel::new(),
            on_error,
            asker,
            template_dir: PathBuf::from("."),
            force: false,
        }
    }

    /// A step whose cleanup takes `cleanup_takes` and records that it finished.
    struct Slow {
        name: &'static str,
        cleanup_takes: Duration,
        finished: &'static Mutex<Vec<&'static str>>,
    }

    #[async_trait]
    impl Step<()> for Slow {
        fn name(&self) -> &str {
            self.name
        }
        async fn run(&self, _: &mut (), _: &BuildCtx) -> Result<(), crate::BoxError> {
            Ok(())
        }
        async fn cleanup(&self, _: &mut (), _: &CleanupCtx<'_>) -> Result<(), crate::BoxError> {
            tokio::time::sleep(self.cleanup_takes).await;
            self.finished.lock().unwrap().push(self.name);
            Ok(())
        }
        fn leftovers(&self, _: &()) -> Vec<Leftover> {
            vec![Leftover {
                what: format!("vm of {}", self.name),
                how_to_reach: Some("ssh -p 2222 127.0.0.1".to_string()),
            }]
        }
    }

    #[tokio::test]
    async fn overrunning_cleanup_is_reported_and_others_still_run() {
        static FINISHED: Mutex<Vec<&str>> = Mutex::new(Vec::new());
        let (events, mut rx) = EventSink::channel(uuid::Uuid::nil(), Redactor::default());
        let ctx = test_ctx(events, OnError::Cleanup, None);
        let quick = |name| Slow {
            name,
            cleanup_takes: Duration::ZERO,
            finished: &FINISHED,
        };
        let (first, last) = (quick("first"), quick("last"));
        let stuck = Slow {
            name: "stuck",
            cleanup_takes: Duration::from_secs(3600),
            finished: &FINISHED,
        };
        let steps: [&dyn Step<()>; 3] = [&first, &stuck, &last];
        let deadline = Duration::from_millis(20);
        let err = run_steps_within(&steps, &mut (), &ctx, deadline)
            .await
            .unwrap_err();
        assert_eq!(*FINISHED.lock().unwrap(), ["last", "first"]);
        match &err {
            BuildError::Cleanup { left_behind, .. } => assert_eq!(left_behind, &["vm of stuck"]),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            error_chain(&err),
            [
                "cleanup failed; these may be left behind: vm of stuck",
                "cleanup of step `stuck` did not finish within 20ms"
            ]
        );
        let mut leftovers = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let EventKind::Leftover { what, how_to_reach } = ev.kind {
                leftovers.push((what, how_to_reach.unwrap_or_default()));
            }
        }
        assert_eq!(
            leftovers,
            [(
                "vm of stuck".to_string(),
                "ssh -p 2222 127.0.0.1".to_string()
            )]
        );
    }

    /// A step that fails its first `fails` runs, counting runs and cleanups.
    struct Flaky {
        fails: u32,
        runs: Mutex<u32>,
        cleanups: Mutex<u32>,
    }

    #[async_trait]
    impl Step<()> for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        async fn run(&self, _: &mut (), _: &BuildCtx) -> Result<(), crate::BoxError> {
            let mut runs = self.runs.lock().unwrap();
            *runs += 1;
            if *runs <= self.fails {
                return Err(format!("run {runs} failed").into());
            }
            Ok(())
        }
        async fn cleanup(&self, _: &mut (), _: &CleanupCtx<'_>) -> Result<(), crate::BoxError> {
            *self.cleanups.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// Gives the answers in order, recording each question.
    struct Answers(Mutex<Vec<crate::runner::AskAnswer>>, Mutex<Vec<String>>);

    impl crate::runner::Asker for Answers {
        fn ask(&self, _: &str, error: &str) -> crate::runner::AskAnswer {
            self.1.lock().unwrap().push(error.to_string());
            self.0.lock().unwrap().remove(0)
        }
    }

    #[tokio::test]
    async fn ask_retry_runs_the_failed_step_again() {
        use crate::runner::AskAnswer::{Cleanup, Retry};
        for (fails, answers, ok, runs) in [
            // Two retries, then the step works.
            (2, vec![Retry, Retry], true, 3),
            // A retry that fails again asks again; "cleanup" then ends the build.
            (5, vec![Retry, Cleanup, Cleanup], false, 2),
        ] {
            let (events, _rx) = EventSink::channel(uuid::Uuid::nil(), Redactor::default());
            let asker = std::sync::Arc::new(Answers(Mutex::new(answers), Mutex::new(Vec::new())));
            let ctx = test_ctx(events, OnError::Ask, Some(asker.clone()));
            let flaky = Flaky {
                fails,
                runs: Mutex::new(0),
                cleanups: Mutex::new(0),
            };
            let steps: [&dyn Step<()>; 1] = [&flaky];
            let result = run_steps(&steps, &mut (), &ctx).await;
            assert_eq!(result.is_ok(), ok, "{result:?}");
            assert_eq!(*flaky.runs.lock().unwrap(), runs);
            // Retried or not, the step is cleaned up once.
            assert_eq!(*flaky.cleanups.lock().unwrap(), 1);
            let questions = asker.1.lock().unwrap().clone();
            assert_eq!(
                questions[0], "step `flaky` failed: run 1 failed",
                "{questions:?}"
            );
        }
    }
}
