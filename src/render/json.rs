//! Newline-delimited JSON: one event per line on stdout, nothing else (schema: `docs/events.md`).

use std::io::Write;

use kiln_core::event::Event;
use kiln_core::runner::RunSummary;

use super::Renderer;

pub struct Json<W: Write> {
    out: W,
}

impl<W: Write> Json<W> {
    pub fn new(out: W) -> Self {
        Json { out }
    }
}

impl<W: Write> Renderer for Json<W> {
    fn event(&mut self, ev: &Event) {
        // A closed stdout (e.g. `| head`) must not stop the build and its cleanup.
        if serde_json::to_writer(&mut self.out, ev).is_ok() {
            let _ = self.out.write_all(b"\n");
            let _ = self.out.flush();
        }
    }

    fn finish(&mut self, _summary: &RunSummary) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::event::{EventKind, EventSink, OutputStream, Redactor};
    use uuid::Uuid;

    #[test]
    fn every_line_is_one_json_event() {
        let (sink, mut rx) = EventSink::channel(Uuid::new_v4(), Redactor::default());
        let b = sink.for_build("null.first");
        b.emit(EventKind::StepStarted { step: "s".into() });
        b.output("shell-local", OutputStream::Stdout, "hello\nworld");
        sink.emit(EventKind::RunFinished {
            ok: true,
            builds_ok: 1,
            builds_failed: 0,
            cancelled: false,
            duration_ms: 3,
        });
        let mut r = Json::new(Vec::new());
        while let Ok(ev) = rx.try_recv() {
            r.event(&ev);
        }
        let text = String::from_utf8(r.out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], "step_started");
        assert_eq!(lines[0]["build"], "null.first");
        assert_eq!(lines[1]["line"], "hello\nworld");
        assert_eq!(lines[2]["type"], "run_finished");
        assert!(lines[2].get("build").is_none());
    }
}
