//! The [`ProvisionHook`] the runner hands to builders: runs a build's provisioners in order with
//! their `pause_before`, `timeout` and `max_retries`, and its `error-cleanup-provisioner`.
//!
//! Each provisioner's body is evaluated when it runs, with the `build.*` values of the machine
//! ([`ConnInfo::runtime_vars`]) and `build.PackerRunUUID`. The machine's secrets (password,
//! private key) are added to the run's redactor first, so no event can show them.
//!
//! `timeout` bounds each attempt; a failed attempt is retried at once (`max_retries` times) with
//! a warning `Message`. A cancellation is never retried. After a provisioner fails (not after a
//! cancellation), the `error-cleanup-provisioner` runs with the same communicator when the
//! `on_error` policy is `RunCleanupProvisioner` or leads to a cleanup; its own failure is
//! reported by its `StepFinished` event and the first error is returned.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_comm::Communicator;

use super::cancel::unless_cancelled;
use super::{asks_retry, error_chain, on_error_answer, AskAnswer, BuildCtx, BuildError, OnError};
use crate::component::{ConnInfo, ProvisionCtx, ProvisionHook, Registry};
use crate::diag::SourceMap;
use crate::event::{EventKind, Level};
use crate::plan::{Build, ProvisionerSpec, RuntimeVars};

/// Why a provisioner could not run to the end (besides its own error).
#[derive(Debug, thiserror::Error)]
enum ProvisionError {
    #[error("unknown provisioner type `{0}`")]
    UnknownKind(String),
    #[error("did not finish within {0:?}")]
    TimedOut(Duration),
}

/// Runs the provisioners of one build.
pub(crate) struct Provisioners<'a> {
    pub build: &'a Build,
    pub registry: &'a Registry,
    pub sources: &'a SourceMap,
}

#[async_trait]
impl ProvisionHook for Provisioners<'_> {
    async fn provision(
        &self,
        ctx: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
    ) -> Result<(), BuildError> {
        let secrets = [&conn.password, &conn.ssh_private_key];
        ctx.events
            .add_secrets(secrets.into_iter().flatten().map(|s| s.expose().clone()));
        let mut vars = RuntimeVars {
            values: conn.runtime_vars(),
        };
        vars.values
            .insert("PackerRunUUID".to_string(), ctx.run_id.to_string());

        for spec in &self.build.provisioners {
            let prefix = format!("provisioner {}", spec.position);
            let err = loop {
                match self.run_one(&prefix, spec, ctx, conn, comm, &vars).await {
                    Ok(()) => break None,
                    // `-on-error=ask` answered "retry": this provisioner runs again.
                    Err(err) if asks_retry(ctx, &err).await => {
                        ctx.events.message(
                            Level::Warn,
                            format!("retrying {}", self.describe(&prefix, spec)),
                        );
                    }
                    Err(err) => break Some(err),
                }
            };
            let Some(err) = err else {
                continue;
            };
            if let Some(cleanup) = &self.build.error_cleanup_provisioner {
                if !err.is_cancelled() && wants_error_cleanup(ctx, &err).await {
                    let prefix = "error-cleanup-provisioner";
                    // Its failure is reported by its `StepFinished` event; `err` stays primary.
                    let _reported = self.run_one(prefix, cleanup, ctx, conn, comm, &vars).await;
                }
            }
            return Err(err);
        }
        Ok(())
    }
}

/// Whether to run the `error-cleanup-provisioner` after `err`.
async fn wants_error_cleanup(ctx: &BuildCtx, err: &BuildError) -> bool {
    ctx.on_error == OnError::RunCleanupProvisioner
        || on_error_answer(ctx, err).await == AskAnswer::Cleanup
}

impl Provisioners<'_> {
    /// For errors: `provisioner 2 (shell-local "install") at build.pkr.hcl:12:3`.
    fn describe(&self, prefix: &str, spec: &ProvisionerSpec) -> String {
        let c = &spec.component;
        let name = c
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let at = self.sources.location(c.span);
        format!("{prefix} ({}{name}) at {at}", c.kind)
    }

    /// Pauses, then runs one provisioner between `StepStarted` and `StepFinished` events named
    /// like `provisioner 2 (shell-local)`.
    async fn run_one(
        &self,
        prefix: &str,
        spec: &ProvisionerSpec,
        ctx: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
        vars: &RuntimeVars,
    ) -> Result<(), BuildError> {
        let label = &format!("{prefix} ({})", spec.component.kind);
        if let Some(pause) = spec.pause_before {
            ctx.events
                .message(Level::Info, format!("pausing {pause:?} before {label}"));
            tokio::select! {
                _ = ctx.cancel.cancel.cancelled() => return Err(BuildError::Cancelled),
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if ctx.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        ctx.events.emit(EventKind::StepStarted {
            step: label.to_string(),
        });
        let start = Instant::now();
        let result = self.attempts(prefix, spec, ctx, conn, comm, vars).await;
        let error = result.as_ref().err().map(|err| match err {
            BuildError::Provisioner { source, .. } => error_chain(source.as_ref()).join(": "),
            other => error_chain(other).join(": "),
        });
        ctx.events.emit(EventKind::StepFinished {
            step: label.to_string(),
            duration_ms: start.elapsed().as_millis() as u64,
            ok: result.is_ok(),
            error,
        });
        result
    }

    /// Configures the provisioner and runs it up to `max_retries + 1` times.
    async fn attempts(
        &self,
        prefix: &str,
        spec: &ProvisionerSpec,
        ctx: &BuildCtx,
        conn: &ConnInfo,
        comm: &dyn Communicator,
        vars: &RuntimeVars,
    ) -> Result<(), BuildError> {
        let fail = |source: crate::BoxError| BuildError::Provisioner {
            what: self.describe(prefix, spec),
            source,
        };
        let kind_name = &spec.component.kind;
        let config = spec
            .component
            .body
            .evaluate(&self.build.scope, Some(vars), kind_name)
            .map_err(|d| fail(Box::new(d)))?;
        let kind = self
            .registry
            .provisioners
            .get(kind_name.as_str())
            .ok_or_else(|| fail(Box::new(ProvisionError::UnknownKind(kind_name.clone()))))?;
        let provisioner = config
            .conform(kind.options())
            .and_then(|config| kind.configure(&config))
            .map_err(|d| fail(Box::new(d)))?;
        let pctx = ProvisionCtx {
            build: ctx,
            comm,
            conn,
        };
        let attempts = spec.max_retries + 1;
        let mut attempt = 1;
        loop {
            let run = async {
                match spec.timeout {
                    Some(limit) => tokio::time::timeout(limit, provisioner.provision(&pctx))
                        .await
                        .unwrap_or_else(|_| Err(Box::new(ProvisionError::TimedOut(limit)))),
                    None => provisioner.provision(&pctx).await,
                }
            };
            let stops = provisioner.stops_on_cancel();
            let Some(result) = unless_cancelled(run, stops, &ctx.cancel).await else {
                return Err(BuildError::Cancelled);
            };
            match result {
                Ok(()) => return Ok(()),
                Err(err) if attempt < attempts => {
                    ctx.events.message(
                        Level::Warn,
                        format!(
                            "{} failed (attempt {attempt} of {attempts}): {}; retrying",
                            self.describe(prefix, spec),
                            error_chain(err.as_ref()).join(": ")
                        ),
                    );
                    attempt += 1;
                }
                Err(err) => return Err(fail(err)),
            }
        }
    }
}
