//! Source files, spans and diagnostics: every problem Kiln reports about user input names a file,
//! line and column and shows the offending snippet.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::event::Redactor;

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }
}

/// One loaded source file.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Every file Kiln read while loading a template (templates, var files), so that spans can be
/// turned into file, line and column, and snippets can be shown.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<Arc<SourceFile>>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> FileId {
        let id = FileId(self.files.len() as u32);
        self.files.push(Arc::new(SourceFile {
            path: path.into(),
            text: text.into(),
        }));
        id
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// The file, or `None` for an id from another map.
    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id.0 as usize).map(|f| f.as_ref())
    }

    /// The source text a span covers (empty for an id from another map).
    pub fn slice(&self, span: Span) -> &str {
        self.get(span.file)
            .and_then(|f| f.text.get(span.start..span.end))
            .unwrap_or("")
    }

    pub fn path(&self, id: FileId) -> &Path {
        &self.file(id).path
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f.as_ref()))
    }

    /// One-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let text = &self.file(file).text;
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// `path:line:col` of the start of a span.
    pub fn location(&self, span: Span) -> String {
        let (line, col) = self.line_col(span.file, span.start);
        format!("{}:{}:{}", self.path(span.file).display(), line, col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in user input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// What is wrong, a lowercase sentence fragment without a full stop.
    pub message: String,
    /// Where; `None` for problems with no place in a file (e.g. a missing file).
    pub span: Option<Span>,
    /// A short note shown under the snippet, pointing at the span.
    pub label: Option<String>,
    /// A hint: "did you mean `memory`?".
    pub help: Option<String>,
    /// Sensitive values the snippet line may hold: they are shown as `<sensitive>` (see
    /// [`Diagnostic::redacted`]).
    #[serde(skip)]
    pub secrets: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            secrets: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// This diagnostic with the sensitive values `redactor` knows replaced in its message, label
    /// and help; its snippet line is redacted too when it is rendered. `sources` tells whether
    /// the snippet line holds one of them (only then are they kept with the diagnostic).
    pub fn redacted(mut self, redactor: &Redactor, sources: &SourceMap) -> Self {
        if redactor.is_empty() {
            return self;
        }
        self.message = redactor.redact(&self.message);
        self.label = self.label.map(|l| redactor.redact(&l));
        self.help = self.help.map(|h| redactor.redact(&h));
        if let Some(line) = self.span.and_then(|span| snippet_line(sources, span)) {
            let hidden = redactor.values().filter(|v| line.contains(v.as_str()));
            self.secrets.extend(hidden.cloned());
        }
        self
    }
}

/// The whole line the start of `span` is on.
fn snippet_line(sources: &SourceMap, span: Span) -> Option<&str> {
    let text = &sources.get(span.file)?.text;
    let start = floor_char(text, span.start.min(text.len()));
    let (line_start, line_end) = line_bounds(text, start);
    Some(&text[line_start..line_end])
}

/// Where the line holding byte `at` of `text` starts and ends (before its `\n`).
fn line_bounds(text: &str, at: usize) -> (usize, usize) {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    (line_start, line_end)
}

/// A list of diagnostics gathered in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Suggests the closest of `candidates` to `word`, for "did you mean" hints.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Renders diagnostics for a terminal: `error: message`, then `--> file:line:col`, the source
/// line(s) with the span underlined, the label and the help. No colour when `color` is false.
pub fn render(sources: &SourceMap, diags: &Diagnostics, color: bool) -> String {
    let mut out = String::new();
    for d in diags.iter() {
        render_one(&mut out, sources, d, color);
    }
    out
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[1;33m";
const BLUE: &str = "\x1b[1;34m";
const CYAN: &str = "\x1b[1;36m";

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

fn render_one(out: &mut String, sources: &SourceMap, d: &Diagnostic, color: bool) {
    use std::fmt::Write;
    let (word, code) = match d.severity {
        Severity::Error => ("error", RED),
        Severity::Warning => ("warning", YELLOW),
    };
    let _ = writeln!(
        out,
        "{}{}",
        paint(color, code, word),
        paint(color, BOLD, &format!(": {}", d.message))
    );
    let snippet = d
        .span
        .and_then(|span| sources.get(span.file).map(|file| (span, file)));
    let Some((span, file)) = snippet else {
        if let Some(label) = &d.label {
            let _ = writeln!(out, "  {} {label}", paint(color, BLUE, "="));
        }
        if let Some(help) = &d.help {
            let _ = writeln!(out, "  {} help: {help}", paint(color, BLUE, "="));
        }
        out.push('\n');
        return;
    };
    let text = &file.text;
    let start = floor_char(text, span.start.min(text.len()));
    let end = floor_char(text, span.end.clamp(start, text.len()));
    let (line, col) = sources.line_col(span.file, start);
    let (line_start, line_end) = line_bounds(text, start);
    let line_text = text[line_start..line_end].trim_end_matches('\r');
    // Multi-line spans are underlined up to the end of their first line.
    let underline_end = end.min(line_start + line_text.len()).max(start);
    // The line before, under and after the carets, with any secret it holds redacted.
    let (before, marked, after) = (
        &text[line_start..start],
        &text[start..underline_end],
        &text[underline_end..line_start + line_text.len()],
    );
    let redactor = Redactor::new(d.secrets.iter().cloned());
    let (before, marked, after) = (
        redactor.redact(before),
        redactor.redact(marked),
        redactor.redact(after),
    );
    // A secret across the carets' edges is caught only on the whole line: underline all of it.
    let (before, marked, after) = {
        let joined = format!("{before}{marked}{after}");
        let whole = redactor.redact(&joined);
        if whole == joined {
            (before, marked, after)
        } else {
            (String::new(), whole, String::new())
        }
    };
    let line_text = format!("{before}{marked}{after}");
    let mark_col = before.chars().count() + 1;
    let width = line.to_string().len();
    let pad = " ".repeat(width);
    let bar = paint(color, BLUE, "|");
    let _ = writeln!(
        out,
        "{pad}{} {}:{}:{}",
        paint(color, BLUE, "-->"),
        file.path.display(),
        line,
        col
    );
    let _ = writeln!(out, "{pad} {bar}");
    let _ = writeln!(
        out,
        "{} {bar} {}",
        paint(color, BLUE, &line.to_string()),
        line_text.replace('\t', " ")
    );
    let carets = marked.chars().count().max(1);
    let marks = paint(color, code, &"^".repeat(carets));
    let mut mark_line = format!("{pad} {bar} {}{marks}", " ".repeat(mark_col - 1));
    if let Some(label) = &d.label {
        let _ = write!(mark_line, " {}", paint(color, code, label));
    }
    let _ = writeln!(out, "{mark_line}");
    if let Some(help) = &d.help {
        let _ = writeln!(
            out,
            "{pad} {} {}: {help}",
            paint(color, BLUE, "="),
            paint(color, CYAN, "help")
        );
    }
    out.push('\n');
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_snippet_label_and_help() {
        let mut sources = SourceMap::new();
        let text = "a = 1\nsource \"nul\" \"x\" {\n}\n";
        let id = sources.add("t.pkr.hcl", text);
        let start = text.find("\"nul\"").unwrap();
        let diags: Diagnostics = Diagnostic::error("unknown source type `nul`")
            .at(Span::new(id, start, start + 5))
            .with_label("not a known type")
            .with_help("did you mean `null`?")
            .into();
        assert_eq!(
            render(&sources, &diags, false),
            "error: unknown source type `nul`\n \
             --> t.pkr.hcl:2:8\n  \
             |\n\
             2 | source \"nul\" \"x\" {\n  \
             |        ^^^^^ not a known type\n  \
             = help: did you mean `null`?\n\n"
        );
        assert!(render(&sources, &diags, true).contains("\x1b["));
    }

    #[test]
    fn renders_without_span_and_multiline_spans() {
        let mut sources = SourceMap::new();
        let id = sources.add("t.pkr.hcl", "build {\n}\n");
        let diags = Diagnostics(vec![
            Diagnostic::warning("no place").with_help("a hint"),
            Diagnostic::error("whole block").at(Span::new(id, 0, 9)),
            Diagnostic::error("other map").at(Span::new(FileId(7), 0, 1)),
        ]);
        let out = render(&sources, &diags, false);
        assert!(
            out.starts_with("warning: no place\n  = help: a hint\n"),
            "{out}"
        );
        assert!(out.contains("1 | build {\n  | ^^^^^^^\n"), "{out}");
        assert!(out.contains("error: other map\n\n"), "{out}");
    }
}
