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
    decide_color(flag, is_terminal, std::env::var_os("NO_COLOR"))
}

fn decide_color(flag: bool, is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    let no_color = no_color.is_some_and(|v| !v.is_empty());
    flag && !no_color && is_terminal
}

#[cfg(test)]
mod tests {
    use super::decide_color;

    #[test]
    fn colour_needs_flag_terminal_and_no_no_color() {
        assert!(decide_color(true, true, None));
        assert!(decide_color(true, true, Some("".into())));
        assert!(!decide_color(true, true, Some("1".into())));
        assert!(!decide_color(false, true, None));
        assert!(!decide_color(true, false, None));
    }
}
