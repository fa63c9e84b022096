//! The typed event stream: everything the engine has to say, as data. The CLI renders it for
//! people or as JSON lines (schema in `docs/events.md`); manifests and registry records are built
//! from events and artifacts, never from scraped text.
//!
//! Every event passes through the [`Redactor`] of its [`EventSink`] before it leaves the engine,
//! so no consumer can see a sensitive value.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::artifact::Artifact;

/// Version of the JSON event schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    pub run_id: Uuid,
    pub time: DateTime<Utc>,
    /// The build's name (`BUILD.TYPE.NAME` or `TYPE.NAME`); absent for run-level events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        builds: Vec<String>,
        kiln_version: String,
    },
    BuildStarted {
        builder_type: String,
    },
    StepStarted {
        step: String,
    },
    StepFinished {
        step: String,
        duration_ms: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A line of output from a command (remote or local).
    Output {
        /// Who ran the command, e.g. `shell-local`, `provisioner 2 (shell)`.
        source: String,
        stream: OutputStream,
        line: String,
    },
    /// A free-form message from a component.
    Message {
        level: Level,
        text: String,
    },
    /// Waiting for something external (guest ready, SSH banner), with an optional deadline.
    Waiting {
        what: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Progress of a long transfer or computation.
    Progress {
        what: String,
        done: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    CleanupStarted {
        step: String,
    },
    CleanupFinished {
        step: String,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Something the build created that is still there (after `-on-error=abort`, a failed
    /// cleanup or an aborted interrupt), and how to reach it.
    Leftover {
        what: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        how_to_reach: Option<String>,
    },
    ArtifactProduced {
        artifact: Artifact,
    },
    BuildFinished {
        ok: bool,
        cancelled: bool,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    RunFinished {
        ok: bool,
        builds_ok: usize,
        builds_failed: usize,
        cancelled: bool,
        duration_ms: u64,
    },
}

/// Replaces sensitive values in text. Values are matched as whole values: an occurrence counts
/// only when the characters around it are not letters or digits, so a one-letter secret never
/// mangles unrelated words. Values of 8 or more characters are also replaced inside words.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    values: Vec<String>,
}

/// What redacted text shows instead of a secret.
pub const REDACTED: &str = "<sensitive>";

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        // Longest first, so that a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The values this redactor replaces, longest first.
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.values.iter()
    }

    /// This redactor with `more` values added.
    pub fn extended(&self, more: impl IntoIterator<Item = String>) -> Redactor {
        Redactor::new(self.values.iter().cloned().chain(more))
    }

    /// Returns `text` with every sensitive value replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            out = replace_whole(&out, v, v.chars().count() >= 8);
        }
        out
    }
}

fn replace_whole(text: &str, needle: &str, anywhere: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(pos) = rest.find(needle) {
        let before = rest[..pos].chars().next_back().or(prev);
        let after = rest[pos + needle.len()..].chars().next();
        let bounded = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        if anywhere || (bounded(before) && bounded(after)) {
            out.push_str(&rest[..pos]);
            out.push_str(REDACTED);
            prev = needle.chars().next_back();
            rest = &rest[pos + needle.len()..];
        } else {
            // Not a whole value: keep the first character and look again after it.
            let step = rest[pos..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..pos + step]);
            prev = rest[pos..].chars().next();
            rest = &rest[pos + step..];
        }
    }
    out.push_str(rest);
    out
}

impl EventKind {
    /// Applies `f` to every free-text field.
    fn map_text(&mut self, f: &dyn Fn(&str) -> String) {
        use EventKind::*;
        match self {
            StepFinished { error, .. }
            | CleanupFinished { error, .. }
            | BuildFinished { error, .. } => {
                if let Some(e) = error {
                    *e = f(e);
                }
            }
            Output { line, .. } => *line = f(line),
            Message { text, .. } => *text = f(text),
            Waiting { what, .. } | Progress { what, .. } => *what = f(what),
            Leftover { what, how_to_reach } => {
                *what = f(what);
                if let Some(h) = how_to_reach {
                    *h = f(h);
                }
            }
            ArtifactProduced { artifact } => {
                artifact.id = f(&artifact.id);
                for file in &mut artifact.files {
                    let path = file.path.to_string_lossy();
                    let redacted = f(&path);
                    if redacted != path {
                        file.path = redacted.into();
                    }
                }
                if let Ok(s) = serde_json::to_string(&artifact.data) {
                    let r = f(&s);
                    if r != s {
                        if let Ok(m) = serde_json::from_str(&r) {
                            artifact.data = m;
                        }
                    }
                }
            }
            RunStarted { .. }
            | BuildStarted { .. }
            | StepStarted { .. }
            | CleanupStarted { .. }
            | RunFinished { .. } => {}
        }
    }
}

/// Where engine code sends events. Cheap to clone; each clone may be bound to a build. All clones
/// of one sink share one redactor, so a secret learned at run time ([`EventSink::add_secrets`])
/// is redacted from every event emitted afterwards, whichever clone emits it.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    run_id: Uuid,
    build: Option<String>,
    redactor: Arc<RwLock<Redactor>>,
}

impl EventSink {
    /// A sink and the receiving end the renderer reads from.
    pub fn channel(
        run_id: Uuid,
        redactor: Redactor,
    ) -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            EventSink {
                tx,
                run_id,
                build: None,
                redactor: Arc::new(RwLock::new(redactor)),
            },
            rx,
        )
    }

    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// The redactor as it is now (secrets added later are not in the returned copy).
    pub fn redactor(&self) -> Redactor {
        self.redactor
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Adds values to redact from now on, for every clone of this sink: secrets known only at run
    /// time, such as a generated SSH key or password. Multi-line values (keys) are also redacted
    /// line by line, because output events carry one line each.
    pub fn add_secrets(&self, values: impl IntoIterator<Item = String>) {
        let mut more = Vec::new();
        for value in values {
            if value.contains('\n') {
                more.extend(
                    value
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            more.push(value);
        }
        if more.iter().all(String::is_empty) {
            return;
        }
        let mut redactor = self
            .redactor
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *redactor = redactor.extended(more);
    }

    /// A sink whose events carry `build`.
    pub fn for_build(&self, build: &str) -> EventSink {
        EventSink {
            build: Some(build.to_string()),
            ..self.clone()
        }
    }

    pub fn emit(&self, mut kind: EventKind) {
        {
            let r = self
                .redactor
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !r.is_empty() {
                kind.map_text(&|s| r.redact(s));
            }
        }
        // A closed receiver means nobody is listening any more (the CLI is exiting).
        let _ = self.tx.send(Event {
            v: SCHEMA_VERSION,
            run_id: self.run_id,
            time: Utc::now(),
            build: self.build.clone(),
            kind,
        });
    }

    pub fn message(&self, level: Level, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level,
            text: text.into(),
        });
    }

    pub fn output(&self, source: &str, stream: OutputStream, line: &str) {
        self.emit(EventKind::Output {
            source: source.to_string(),
            stream,
            line: line.to_string(),
        });
    }

    pub fn waiting(&self, what: impl Into<String>, timeout: Option<Duration>) {
        self.emit(EventKind::Waiting {
            what: what.into(),
            timeout_ms: timeout.map(|d| d.as_millis() as u64),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secret_does_not_mangle_words() {
        let r = Redactor::new(["e".to_string()]);
        assert_eq!(r.redact("net e x=e"), "net <sensitive> x=<sensitive>");
    }

    #[test]
    fn secret_redacted_between_punctuation() {
        let r = Redactor::new(["hunter2".to_string()]);
        assert_eq!(
            r.redact("pw=hunter2; again:hunter2"),
            "pw=<sensitive>; again:<sensitive>"
        );
        assert_eq!(r.redact("hunter2x"), "hunter2x");
    }

    #[test]
    fn long_secret_redacted_anywhere() {
        let r = Redactor::new(["s3cr3tvalue".to_string()]);
        assert_eq!(r.redact("xs3cr3tvaluey"), "x<sensitive>y");
    }

    #[test]
    fn sink_redacts_events() {
        let (sink, mut rx) = EventSink::channel(Uuid::nil(), Redactor::new(["pw".to_string()]));
        sink.output("shell-local", OutputStream::Stdout, "the pw is pw");
        let ev = rx.try_recv().unwrap();
        match ev.kind {
            EventKind::Output { line, .. } => assert_eq!(line, "the <sensitive> is <sensitive>"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn artifacts_are_redacted_id_files_and_data() {
        let (sink, mut rx) =
            EventSink::channel(Uuid::nil(), Redactor::new(["tenant-7f3a".to_string()]));
        let mut data = serde_json::Map::new();
        data.insert("repo".into(), "registry/tenant-7f3a/app".into());
        sink.emit(EventKind::ArtifactProduced {
            artifact: crate::artifact::Artifact {
                builder_type: "null".into(),
                id: "image-tenant-7f3a".into(),
                files: vec![crate::artifact::ArtifactFile {
                    path: "/out/tenant-7f3a/disk.qcow2".into(),
                    size: 1,
                    sha256: String::new(),
                }],
                data,
            },
        });
        let EventKind::ArtifactProduced { artifact } = rx.try_recv().unwrap().kind else {
            panic!("not an artifact event");
        };
        assert_eq!(artifact.id, "image-<sensitive>");
        assert_eq!(
            artifact.files[0].path,
            std::path::Path::new("/out/<sensitive>/disk.qcow2")
        );
        assert_eq!(artifact.data["repo"], "registry/<sensitive>/app");
    }

    #[test]
    fn secrets_added_later_are_redacted_by_every_clone() {
        let (sink, mut rx) = EventSink::channel(Uuid::nil(), Redactor::default());
        let build = sink.for_build("null.a");
        build.add_secrets(["-----BEGIN KEY-----\nAAAAbbbbCCCC\n-----END KEY-----".to_string()]);
        sink.message(Level::Info, "line AAAAbbbbCCCC");
        match rx.try_recv().unwrap().kind {
            EventKind::Message { text, .. } => assert_eq!(text, "line <sensitive>"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
