//! Output for people: every line prefixed by its build's name (in a colour of its own), steps with
//! durations, command output, cleanup, leftovers, artifacts, and Packer's final summary.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_core::artifact::Artifact;
use kiln_core::event::{Event, EventKind, Level};
use kiln_core::runner::RunSummary;

use super::Renderer;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub color: bool,
    /// Prefix lines with the event's time (`-timestamp-ui`).
    pub timestamps: bool,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress_bars: bool,
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
/// Colours for build names (no red or yellow: those mean errors and warnings).
const PALETTE: [&str; 6] = [
    "\x1b[36m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[96m", "\x1b[92m",
];

/// The stable colour of a build: the same name always gets the same colour.
fn build_color(name: &str) -> &'static str {
    // FNV-1a: stable across runs and platforms, unlike `DefaultHasher`.
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

/// `1.2s`, `3m4s`.
pub fn duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    if d.as_secs() >= 60 {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One line per part of an artifact: what it is, then its files with digests.
pub fn describe_artifact(a: &Artifact) -> Vec<String> {
    let mut lines = vec![if a.id.is_empty() {
        format!("{} artifact", a.builder_type)
    } else {
        format!("{} artifact: {}", a.builder_type, a.id)
    }];
    for f in &a.files {
        lines.push(format!(
            "  {} ({} bytes, sha256 {})",
            f.path.display(),
            f.size,
            f.sha256
        ));
    }
    lines
}

pub struct Human<W: Write> {
    out: W,
    opts: Options,
    bars: Option<Bars>,
    /// Builds with a failed or cancelled step: only their cleanups are worth showing.
    troubled: HashSet<Option<String>>,
}

/// Progress bars, one per (build, what), drawn on stderr.
struct Bars {
    multi: MultiProgress,
    bars: HashMap<(String, String), ProgressBar>,
}

impl<W: Write> Human<W> {
    pub fn new(out: W, opts: Options) -> Self {
        let bars = opts.progress_bars.then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: HashMap::new(),
        });
        Human {
            out,
            opts,
            bars,
            troubled: HashSet::new(),
        }
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.opts.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// Writes `text` (each of its lines) after `marker` and the build's name.
    fn line(
        &mut self,
        time: DateTime<Utc>,
        build: Option<&str>,
        marker: &str,
        text: &str,
        color: Option<&str>,
    ) {
        let mut buf = String::new();
        for line in text.split('\n') {
            if self.opts.timestamps {
                buf.push_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true));
                buf.push(' ');
            }
            buf.push_str(marker);
            if let Some(b) = build {
                let name = format!("{b}:");
                buf.push_str(&self.paint(build_color(b), &name));
                buf.push(' ');
            }
            match color {
                Some(c) => buf.push_str(&self.paint(c, line)),
                None => buf.push_str(line),
            }
            buf.push('\n');
        }
        let out = &mut self.out;
        let mut write = || {
            let _ = out.write_all(buf.as_bytes());
            let _ = out.flush();
        };
        match &self.bars {
            Some(bars) if !bars.bars.is_empty() => bars.multi.suspend(write),
            _ => write(),
        }
    }

    fn progress(&mut self, build: Option<&str>, what: &str, done: u64, total: Option<u64>) {
        let Some(bars) = &mut self.bars else { return };
        let key = (build.unwrap_or_default().to_string(), what.to_string());
        let bar = bars.bars.entry(key.clone()).or_insert_with(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template("{prefix} {msg} [{bar:30}] {bytes}/{total_bytes}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner(),
            };
            let bar = bars.multi.add(bar);
            bar.set_prefix(format!("{}:", key.0));
            bar.set_message(key.1.clone());
            bar
        });
        bar.set_position(done);
        if total.is_some_and(|t| done >= t) {
            bar.finish_and_clear();
            bars.bars.remove(&key);
        }
    }

    fn clear_bars(&mut self, build: Option<&str>) {
        if let Some(bars) = &mut self.bars {
            bars.bars.retain(|(b, _), bar| {
                let keep = Some(b.as_str()) != build;
                if !keep {
                    bar.finish_and_clear();
                }
                keep
            });
        }
    }
}

impl<W: Write> Renderer for Human<W> {
    fn event(&mut self, ev: &Event) {
        let b = ev.build.as_deref();
        let t = ev.time;
        match &ev.kind {
            EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => {}
            EventKind::BuildStarted { builder_type } => self.line(
                t,
                b,
                "==> ",
                &format!("build started ({builder_type} builder)"),
                None,
            ),
            EventKind::StepStarted { step } => self.line(t, b, "==> ", &format!("{step}..."), None),
            EventKind::StepFinished {
                step,
                duration_ms,
                ok,
                error,
            } => {
                self.clear_bars(b);
                if *ok {
                    let text = format!("{step}: done in {}", duration(*duration_ms));
                    self.line(t, b, "==> ", &text, None);
                } else {
                    self.troubled.insert(ev.build.clone());
                    let error = error.as_deref().unwrap_or("failed");
                    let text = format!("{step}: failed after {}: {error}", duration(*duration_ms));
                    self.line(t, b, "==> ", &text, Some(RED));
                }
            }
            EventKind::Output { line, .. } => self.line(t, b, "    ", line, None),
            EventKind::Message { level, text } => match level {
                Level::Debug => {}
                Level::Info => self.line(t, b, "==> ", text, None),
                Level::Warn => self.line(t, b, "==> ", &format!("warning: {text}"), Some(YELLOW)),
                Level::Error => self.line(t, b, "==> ", &format!("error: {text}"), Some(RED)),
            },
            EventKind::Waiting { what, timeout_ms } => {
                let text = match timeout_ms {
                    Some(ms) => format!("waiting for {what} (timeout {})", duration(*ms)),
                    None => format!("waiting for {what}"),
                };
                self.line(t, b, "==> ", &text, None);
            }
            EventKind::Progress { what, done, total } => self.progress(b, what, *done, *total),
            EventKind::CleanupStarted { step } => {
                if self.troubled.contains(&ev.build) {
                    self.line(t, b, "==> ", &format!("cleaning up: {step}"), None)
                }
            }
            EventKind::CleanupFinished { step, ok, error } => {
                if !*ok {
                    let error = error.as_deref().unwrap_or("failed");
                    let text = format!("cleanup of {step} failed: {error}");
                    self.line(t, b, "==> ", &text, Some(RED));
                }
            }
            EventKind::Leftover { what, how_to_reach } => {
                self.line(
                    t,
                    b,
                    "==> ",
                    &format!("left in place: {what}"),
                    Some(YELLOW),
                );
                if let Some(how) = how_to_reach {
                    self.line(t, b, "    ", &format!("reach it with: {how}"), None);
                }
            }
            EventKind::ArtifactProduced { artifact } => {
                let text = describe_artifact(artifact).join("\n");
                self.line(t, b, "==> ", &text, None);
            }
            EventKind::BuildFinished {
                ok,
                cancelled,
                duration_ms,
                error,
            } => {
                self.clear_bars(b);
                let d = duration(*duration_ms);
                if *cancelled {
                    self.line(
                        t,
                        b,
                        "==> ",
                        &format!("build cancelled after {d}"),
                        Some(YELLOW),
                    );
                } else if *ok {
                    self.line(t, b, "==> ", &format!("build finished after {d}"), None);
                } else {
                    let error = error.as_deref().unwrap_or("failed");
                    self.line(
                        t,
                        b,
                        "==> ",
                        &format!("build errored after {d}: {error}"),
                        Some(RED),
                    );
                }
            }
        }
    }

    fn finish(&mut self, summary: &RunSummary) {
        self.clear_bars(None);
        let now = Utc::now();
        let failed: Vec<_> = summary
            .builds
            .iter()
            .filter(|b| !b.ok && !b.cancelled)
            .collect();
        if !failed.is_empty() {
            let head = self.paint(
                BOLD,
                "==> Some builds didn't complete successfully and had errors:",
            );
            self.line(now, None, "", &head, None);
            for b in failed {
                self.line(
                    now,
                    None,
                    "--> ",
                    &format!("{}: {}", b.name, b.error.join(": ")),
                    Some(RED),
                );
            }
        }
        if summary.cancelled {
            self.line(now, None, "", "==> Builds were cancelled.", Some(YELLOW));
        }
        if !summary
            .builds
            .iter()
            .any(|b| b.ok && !b.artifacts.is_empty())
        {
            let head = self.paint(BOLD, "==> Builds finished but no artifacts were created.");
            self.line(now, None, "", &head, None);
            return;
        }
        let head = self.paint(
            BOLD,
            "==> Builds finished. The artifacts of successful builds are:",
        );
        self.line(now, None, "", &head, None);
        for b in summary.builds.iter().filter(|b| b.ok) {
            if b.artifacts.is_empty() {
                self.line(
                    now,
                    None,
                    "--> ",
                    &format!("{}: no artifacts", b.name),
                    None,
                );
            }
            let mut shown: Vec<&Artifact> = Vec::new();
            // A post-processor that keeps its input may hand back the same artifact.
            for a in &b.artifacts {
                if shown.contains(&a) {
                    continue;
                }
                shown.push(a);
                let text = format!("{}: {}", b.name, describe_artifact(a).join("\n    "));
                self.line(now, None, "--> ", &text, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::event::{EventSink, OutputStream, Redactor};
    use kiln_core::runner::BuildOutcome;
    use uuid::Uuid;

    fn render(opts: Options, emit: impl FnOnce(&EventSink)) -> String {
        let (sink, mut rx) = EventSink::channel(Uuid::nil(), Redactor::default());
        emit(&sink);
        let mut r = Human::new(Vec::new(), opts);
        while let Ok(ev) = rx.try_recv() {
            r.event(&ev);
        }
        String::from_utf8(r.out).unwrap()
    }

    #[test]
    fn lines_are_prefixed_by_build() {
        let out = render(Options::default(), |s| {
            let b = s.for_build("null.first");
            b.emit(EventKind::StepStarted {
                step: "provision".into(),
            });
            b.output("shell-local", OutputStream::Stdout, "one\ntwo");
            b.emit(EventKind::StepFinished {
                step: "provision".into(),
                duration_ms: 1500,
                ok: true,
                error: None,
            });
        });
        assert_eq!(
            out,
            "==> null.first: provision...\n    null.first: one\n    null.first: two\n\
             ==> null.first: provision: done in 1.5s\n"
        );
    }

    #[test]
    fn cleanups_shown_only_after_trouble() {
        let out = render(Options::default(), |s| {
            let ok = s.for_build("null.ok");
            ok.emit(EventKind::CleanupStarted {
                step: "connect".into(),
            });
            let bad = s.for_build("null.bad");
            bad.emit(EventKind::StepFinished {
                step: "provision".into(),
                duration_ms: 10,
                ok: false,
                error: Some("cancelled".into()),
            });
            bad.emit(EventKind::CleanupStarted {
                step: "connect".into(),
            });
        });
        assert!(!out.contains("null.ok"), "{out}");
        assert!(
            out.contains("==> null.bad: cleaning up: connect\n"),
            "{out}"
        );
    }

    #[test]
    fn leftovers_say_how_to_reach_them() {
        let out = render(Options::default(), |s| {
            s.for_build("qemu.a").emit(EventKind::Leftover {
                what: "VM `kiln-1`".into(),
                how_to_reach: Some("ssh -p 2222 root@127.0.0.1".into()),
            });
        });
        assert_eq!(
            out,
            "==> qemu.a: left in place: VM `kiln-1`\n    qemu.a: reach it with: ssh -p 2222 root@127.0.0.1\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let emit = |s: &EventSink| {
            s.for_build("null.first").message(Level::Warn, "careful");
        };
        let plain = render(Options::default(), emit);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = render(
            Options {
                color: true,
                ..Options::default()
            },
            emit,
        );
        assert!(coloured.contains(build_color("null.first")), "{coloured:?}");
        assert!(coloured.contains(YELLOW));
    }

    #[test]
    fn summary_without_artifacts_says_so() {
        let mut r = Human::new(Vec::new(), Options::default());
        r.finish(&RunSummary {
            cancelled: true,
            builds: vec![],
        });
        let out = String::from_utf8(r.out).unwrap();
        assert_eq!(
            out,
            "==> Builds were cancelled.\n==> Builds finished but no artifacts were created.\n"
        );
    }

    #[test]
    fn build_colours_are_stable() {
        assert_eq!(build_color("null.first"), build_color("null.first"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let out = render(
            Options {
                timestamps: true,
                ..Options::default()
            },
            |s| s.for_build("b").message(Level::Info, "hi"),
        );
        let (stamp, rest) = out.split_once(' ').unwrap();
        assert!(DateTime::parse_from_rfc3339(stamp).is_ok(), "{stamp}");
        assert_eq!(rest, "==> b: hi\n");
    }

    #[test]
    fn summary_lists_artifacts_and_errors() {
        let mut r = Human::new(Vec::new(), Options::default());
        r.finish(&RunSummary {
            cancelled: false,
            builds: vec![
                BuildOutcome {
                    name: "null.a".into(),
                    ok: true,
                    cancelled: false,
                    error: vec![],
                    artifacts: vec![Artifact {
                        builder_type: "null".into(),
                        id: "x".into(),
                        ..Artifact::default()
                    }],
                },
                BuildOutcome {
                    name: "null.b".into(),
                    ok: false,
                    cancelled: false,
                    error: vec!["step `x` failed".into(), "exit status 1".into()],
                    artifacts: vec![],
                },
            ],
        });
        let out = String::from_utf8(r.out).unwrap();
        assert!(
            out.contains("--> null.b: step `x` failed: exit status 1\n"),
            "{out}"
        );
        assert!(out.contains(
            "==> Builds finished. The artifacts of successful builds are:\n--> null.a: null artifact: x\n"
        ), "{out}");
    }
}
