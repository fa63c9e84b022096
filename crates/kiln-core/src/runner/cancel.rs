//! Cancellation with escalation: the first interrupt cancels, the second hurries cleanups and
//! the work that stops itself (a local process gets SIGTERM, then SIGKILL when hurried).

use std::future::Future;
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
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How long hurried work may take to kill what it runs before the runner drops it.
const HURRY_GRACE: Duration = Duration::from_secs(2);

/// Runs `run` to its end, or returns `None` once `cancel` is cancelled. Work that
/// `stops_on_cancel` (it watches `cancel` itself) is then let stop its own way: it is waited for,
/// for at most [`STOP_DEADLINE`], and for at most [`HURRY_GRACE`] once `cancel` is hurried,
/// before it is dropped. Any other work is dropped at once.
pub(crate) async fn unless_cancelled<F: Future>(
    run: F,
    stops_on_cancel: bool,
    cancel: &Cancel,
) -> Option<F::Output> {
    let mut run = std::pin::pin!(run);
    tokio::select! {
        biased;
        _ = cancel.cancel.cancelled() => {
            if stops_on_cancel {
                let stopping = async {
                    tokio::select! {
                        _ = &mut run => true,
                        _ = cancel.hurry.cancelled() => false,
                    }
                };
                if let Ok(false) = tokio::time::timeout(STOP_DEADLINE, stopping).await {
                    let _ = tokio::time::timeout(HURRY_GRACE, run).await;
                }
            }
            None
        }
        r = &mut run => Some(r),
    }
}
