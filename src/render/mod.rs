//! Rendering of the engine's event stream: for people ([`human`]) or as JSON lines ([`json`]).
//! Renderers only ever see events, which the engine has already redacted.

pub mod human;
pub mod json;

use kiln_core::event::Event;
use kiln_core::runner::RunSummary;

/// Something that shows a run as it happens.
pub trait Renderer {
    fn event(&mut self, ev: &Event);
    /// Called once after the last event, with the (redacted) outcome.
    fn finish(&mut self, summary: &RunSummary);
}

/// Whether to colour a stream: the flag allows it, `NO_COLOR` is not set and the stream is a
/// terminal.
pub fn color_enabled(flag: bool, is_terminal: bool) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    flag && !no_color && is_terminal
}
