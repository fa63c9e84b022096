//! Cancellation with escalation: the first interrupt cancels, the second hurries cleanups and
//! the work that stops itself (a local process gets SIGTERM, then SIGKILL when hurried).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Two tokens: `cancel` stops steps; `hurry` tells cleanups to skip graceful paths (kill rather
/// than shut down). A third interrupt is handled by the CLI, which exits at once.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    pub cancel: CancellationToken,
    pub hurry: CancellationToken,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// How long cancelled work that stops itself ([`Provisioner::stops_on_cancel`],
/// [`Step::stops_on_cancel`]) may take before the runner drops it anyway.
///
/// [`Provisioner::stops_on_cancel`]: crate::component::Provisioner::stops_on_cancel
/// [`Step::stops_on_cancel`]: super::Step::stops_on_cancel
pub(crate) const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How long hurried work may take to kill what it runs before the runner drops it.
pub(crate) const HURRY_GRACE: Duration = Duration::from_secs(2);

/// Lets cancelled work that watches `cancel` itself stop its own way: waits for `run` to return,
/// for at most [`STOP_DEADLINE`], and for at most [`HURRY_GRACE`] once `cancel` is hurried.
/// `None` when it did not return in time (the caller then drops it).
pub(crate) async fn stopped<F: Future>(mut run: Pin<&mut F>, cancel: &Cancel) -> Option<F::Output> {
    let waited = tokio::time::timeout(STOP_DEADLINE, async {
        tokio::select! {
            r = &mut run => Some(r),
            _ = cancel.hurry.cancelled() => None,
        }
    })
    .await;
    match waited {
        Ok(Some(r)) => Some(r),
        Ok(None) => tokio::time::timeout(HURRY_GRACE, run).await.ok(),
        Err(_) => None,
    }
}
