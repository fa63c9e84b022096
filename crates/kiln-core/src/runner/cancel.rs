//! Cancellation with escalation: the first interrupt cancels, the second hurries cleanups.

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
