//! SIGINT and SIGTERM as one stream of interrupts, counted so the build can escalate.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Interrupts {
    int: Signal,
    term: Signal,
    count: u32,
}

impl Interrupts {
    /// Installs the handlers; from now on the signals no longer kill the process.
    pub fn install() -> std::io::Result<Self> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            count: 0,
        })
    }

    /// Waits for the next interrupt and returns how many there have been.
    pub async fn next(&mut self) -> u32 {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        self.count += 1;
        self.count
    }

    pub fn count(&self) -> u32 {
        self.count
    }
}
