//! The formatter behind `kiln fmt`: parses HCL with `hcl-edit` (which keeps comments) and
//! re-emits it in Packer's canonical style: 2-space indentation per nesting level, one space
//! around operators and after commas, `=` aligned within runs of consecutive single-line
//! attributes, comments and the user's line breaks kept. Heredocs are copied verbatim.

use hcl_edit::expr::{
    Array, Expression, ForExpr, FuncCall, Object, ObjectKey, ObjectValueAssignment,
    ObjectValueTerminator, TraversalOperator,
};
use hcl_edit::structure::{Attribute, Block, BlockLabel, Body, Structure};
use hcl_edit::{Decor, Decorate};

/// The input is not valid HCL.
#[derive(Debug, thiserror::Error)]
#[error("invalid HCL at line {line}, column {column}: {message}")]
pub struct FormatError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Formats an HCL file. Formatting formatted text changes nothing.
pub fn format(src: &str) -> Result<String, FormatError> {
    let body = hcl_edit::parser::parse_body(src).map_err(|e| FormatError {
        line: e.location().line(),
        column: e.location().column(),
        message: e.message().to_string(),
    })?;
    let mut w = Writer::new(0);
    write_body(&mut w, &body);
    trivia(&mut w, decor_suffix(body.decor()), Sep::None);
    let out = w.finish();
    let out = out.trim_start_matches('\n').trim_end();
    Ok(if out.is_empty() {
        String::new()
    } else {
        format!("{out}\n")
    })
}

/// Builds the output line by line; indentation is added when a line is complete, so that a
/// line starting with closing brackets is dedented.
struct Writer {
    out: String,
    line: String,
    depth: usize,
    line_indent: usize,
    /// Only closing brackets have been written on the current line so far.
    only_closers: bool,
    /// A bracket opened on the current line has already indented what follows.
    opened_on_line: bool,
    /// For each open bracket: whether it added a level of indentation.
    stack: Vec<bool>,
    /// The last thing written was a line comment or a heredoc: the next must start a new line.
    need_newline: bool,
    /// Whether the first line is a continuation of the caller's line (no indentation).
    continuation: bool,
}

impl Writer {
    fn new(depth: usize) -> Self {
        Writer {
            out: String::new(),
            line: String::new(),
            depth,
            line_indent: depth,
            only_closers: true,
            opened_on_line: false,
            stack: Vec::new(),
            need_newline: false,
            continuation: false,
        }
    }

    /// A writer for an expression that starts in the middle of a line at `depth`.
    fn inline(depth: usize) -> Self {
        Writer {
            continuation: true,
            ..Writer::new(depth)
        }
    }

    fn text(&mut self, s: &str) {
        if self.need_newline {
            self.newline();
        }
        self.only_closers = false;
        self.line.push_str(s);
    }

    fn space(&mut self) {
        if !self.line.is_empty() && !self.line.ends_with(' ') && !self.need_newline {
            self.line.push(' ');
        }
    }

    fn open(&mut self, s: &str) {
        self.text(s);
        let indents = !self.opened_on_line;
        if indents {
            self.depth += 1;
            self.opened_on_line = true;
        }
        self.stack.push(indents);
    }

    fn close(&mut self, s: &str) {
        if self.need_newline {
            self.newline();
        }
        if self.stack.pop().unwrap_or(false) {
            self.depth -= 1;
        }
        if self.only_closers {
            self.line_indent = self.depth;
        }
        self.line.push_str(s);
    }

    fn newline(&mut self) {
        let line = std::mem::take(&mut self.line);
        let line = line.trim_end();
        if !line.is_empty() && !self.continuation {
            self.out.push_str(&"  ".repeat(self.line_indent));
        }
        self.out.push_str(line);
        self.out.push('\n');
        self.continuation = false;
        self.line_indent = self.depth;
        self.only_closers = true;
        self.opened_on_line = false;
        self.need_newline = false;
    }

    /// The text written, the current line unfinished (and not indented when it is the first).
    fn finish(mut self) -> String {
        if self.continuation {
            return self.out + &self.line;
        }
        if !self.line.trim().is_empty() {
            self.newline();
        }
        self.out
    }
}

/// What to write between two tokens when there is no comment or line break between them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sep {
    None,
    Space,
}

fn decor_prefix(d: &Decor) -> &str {
    d.prefix().map_or("", |r| r)
}

fn decor_suffix(d: &Decor) -> &str {
    d.suffix().map_or("", |r| r)
}

/// Writes the comments and line breaks of `raw` (whitespace and comments between tokens), or
/// `sep` when it holds none.
fn trivia(w: &mut Writer, raw: &str, sep: Sep) {
    let mut rest = raw;
    let mut wrote = false;
    let mut last_was_block_comment = false;
    while let Some(c) = rest.chars().next() {
        if c == '\n' {
            w.newline();
            rest = &rest[1..];
            wrote = true;
            last_was_block_comment = false;
        } else if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if rest.starts_with('#') || rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            w.space();
            w.text(rest[..end].trim_end());
            w.need_newline = true;
            rest = &rest[end..];
            wrote = true;
            last_was_block_comment = false;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |i| i + 2);
            w.space();
            w.text(&rest[..end]);
            rest = &rest[end..];
            wrote = true;
            last_was_block_comment = true;
        } else {
            // Not trivia (should not happen): keep it rather than lose it.
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            w.text(&rest[..end]);
            rest = &rest[end..];
            wrote = true;
        }
    }
    if (!wrote && sep == Sep::Space) || last_was_block_comment {
        w.space();
    }
}

/// Whether `raw` holds a comment or a blank line, which ends a run of aligned attributes.
fn breaks_alignment(raw: &str) -> bool {
    raw.matches('\n').count() > 0 || raw.contains('#') || raw.contains("//") || raw.contains("/*")
}

fn write_body(w: &mut Writer, body: &Body) {
    let structures: Vec<&Structure> = body.iter().collect();
    let widths = alignment(&structures, w.depth);
    let columns = comment_columns(&structures, &widths, w.depth);
    for ((s, width), column) in structures.iter().zip(widths).zip(columns) {
        trivia(w, decor_prefix(s.decor()), Sep::None);
        match s {
            Structure::Attribute(a) => write_attribute(w, a, width),
            Structure::Block(b) => write_block(w, b),
        }
        let pad = column.saturating_sub(w.line.chars().count());
        w.line.push_str(&" ".repeat(pad));
        trivia(w, decor_suffix(s.decor()), Sep::None);
        w.newline();
    }
}

/// The column at which each attribute's trailing comment starts (0: no alignment): one past
/// the longest line of its run of consecutive single-line attributes with trailing comments.
fn comment_columns(structures: &[&Structure], widths: &[usize], depth: usize) -> Vec<usize> {
    let mut columns = vec![0; structures.len()];
    let mut run: Vec<(usize, usize)> = Vec::new();
    let flush = |run: &mut Vec<(usize, usize)>, columns: &mut Vec<usize>| {
        let max = run.iter().map(|&(_, len)| len).max().unwrap_or(0);
        for &(i, _) in run.iter() {
            columns[i] = max + 1;
        }
        run.clear();
    };
    for (i, s) in structures.iter().enumerate() {
        let line = match s {
            Structure::Attribute(a) => {
                if breaks_alignment(decor_prefix(a.decor())) {
                    flush(&mut run, &mut columns);
                }
                let suffix = decor_suffix(a.decor());
                let has_comment = suffix.contains('#') || suffix.contains("//");
                let value = render_expr(&a.value, depth).0;
                let key = widths[i].max(a.key.value().as_str().chars().count());
                (has_comment && !value.contains('\n')).then(|| key + 3 + value.chars().count())
            }
            Structure::Block(_) => None,
        };
        match line {
            Some(len) => run.push((i, len)),
            None => flush(&mut run, &mut columns),
        }
    }
    flush(&mut run, &mut columns);
    columns
}

/// Renders an expression that starts mid-line at `depth`.
fn render_expr(e: &Expression, depth: usize) -> (String, bool) {
    let mut sub = Writer::inline(depth);
    expr(&mut sub, e);
    let need_newline = sub.need_newline;
    (sub.finish(), need_newline)
}

/// The key width each attribute pads to: the longest key of its run of consecutive single-line
/// attributes. A blank line, a comment, a block or a multi-line value ends a run; a multi-line
/// value is not aligned (as `packer fmt`).
fn alignment(structures: &[&Structure], depth: usize) -> Vec<usize> {
    let mut widths = vec![0; structures.len()];
    let mut run: Vec<usize> = Vec::new();
    let flush = |run: &mut Vec<usize>, widths: &mut Vec<usize>| {
        let max = run
            .iter()
            .filter_map(|&i| structures[i].as_attribute())
            .map(|a| a.key.value().as_str().chars().count())
            .max()
            .unwrap_or(0);
        for &i in run.iter() {
            widths[i] = max;
        }
        run.clear();
    };
    for (i, s) in structures.iter().enumerate() {
        match s {
            Structure::Attribute(a) => {
                if breaks_alignment(decor_prefix(a.decor())) {
                    flush(&mut run, &mut widths);
                }
                if render_expr(&a.value, depth).0.contains('\n') {
                    flush(&mut run, &mut widths);
                } else {
                    run.push(i);
                }
            }
            Structure::Block(_) => flush(&mut run, &mut widths),
        }
    }
    flush(&mut run, &mut widths);
    widths
}

fn write_attribute(w: &mut Writer, a: &Attribute, width: usize) {
    let key = a.key.value().as_str();
    w.text(key);
    trivia(w, decor_suffix(a.key.decor()), Sep::None);
    let pad = width.saturating_sub(key.chars().count());
    w.space();
    w.text(&" ".repeat(pad));
    w.text("=");
    value(w, &a.value, Sep::Space);
}

/// Writes an expression with its own comments around it; `sep` goes before it when it has none.
fn value(w: &mut Writer, e: &Expression, sep: Sep) {
    trivia(w, decor_prefix(e.decor()), sep);
    expr(w, e);
    trivia(w, decor_suffix(e.decor()), Sep::None);
}

fn label(l: &BlockLabel) -> String {
    match l {
        BlockLabel::Ident(i) => i.value().as_str().to_string(),
        BlockLabel::String(s) => {
            let mut s = s.clone();
            s.decor_mut().clear();
            Expression::String(s).to_string()
        }
    }
}

fn write_block(w: &mut Writer, b: &Block) {
    w.text(b.ident.value().as_str());
    trivia(w, decor_suffix(b.ident.decor()), Sep::None);
    for l in &b.labels {
        let decor = match l {
            BlockLabel::Ident(i) => i.decor(),
            BlockLabel::String(s) => s.decor(),
        };
        trivia(w, decor_prefix(decor), Sep::Space);
        w.text(&label(l));
        trivia(w, decor_suffix(decor), Sep::None);
    }
    w.space();
    let body = &b.body;
    let comments =
        |d: &Decor| breaks_alignment(decor_prefix(d)) || breaks_alignment(decor_suffix(d));
    let oneline = body.prefer_oneline()
        && (body.is_empty() || (body.len() == 1 && body.iter().all(Structure::is_attribute)))
        && !comments(body.decor())
        && body.iter().all(|s| !comments(s.decor()));
    if oneline {
        match body.iter().next().and_then(Structure::as_attribute) {
            Some(a) => {
                w.open("{");
                w.space();
                write_attribute(w, a, 0);
                w.space();
                w.close("}");
            }
            None => w.text("{}"),
        }
        return;
    }
    w.open("{");
    trivia(w, decor_prefix(body.decor()), Sep::None);
    w.newline();
    write_body(w, body);
    trivia(w, decor_suffix(body.decor()), Sep::None);
    w.close("}");
}

/// Writes an expression without its outer decor.
fn expr(w: &mut Writer, e: &Expression) {
    match e {
        Expression::Array(a) => array(w, a),
        Expression::Object(o) => object(w, o),
        Expression::FuncCall(f) => func_call(w, f),
        Expression::Parenthesis(p) => {
            w.open("(");
            value(w, p.inner(), Sep::None);
            w.close(")");
        }
        Expression::Conditional(c) => {
            expr_with(w, &c.cond_expr, Sep::None);
            w.space();
            w.text("?");
            expr_with(w, &c.true_expr, Sep::Space);
            w.space();
            w.text(":");
            expr_with(w, &c.false_expr, Sep::Space);
        }
        Expression::UnaryOp(u) => {
            w.text(u.operator.value().as_str());
            expr_with(w, &u.expr, Sep::None);
        }
        Expression::BinaryOp(b) => {
            expr_with(w, &b.lhs_expr, Sep::None);
            trivia(w, decor_prefix(b.operator.decor()), Sep::Space);
            w.text(b.operator.value().as_str());
            trivia(w, decor_suffix(b.operator.decor()), Sep::None);
            expr_with(w, &b.rhs_expr, Sep::Space);
        }
        Expression::Traversal(t) => {
            expr_with(w, &t.expr, Sep::None);
            for op in &t.operators {
                trivia(w, decor_prefix(op.decor()), Sep::None);
                match op.value() {
                    TraversalOperator::AttrSplat(_) => w.text(".*"),
                    TraversalOperator::FullSplat(_) => w.text("[*]"),
                    TraversalOperator::GetAttr(i) => {
                        w.text(".");
                        w.text(i.value().as_str());
                    }
                    TraversalOperator::LegacyIndex(i) => w.text(&format!(".{}", i.value())),
                    TraversalOperator::Index(i) => {
                        w.open("[");
                        value(w, i, Sep::None);
                        w.close("]");
                    }
                }
                trivia(w, decor_suffix(op.decor()), Sep::None);
            }
        }
        Expression::ForExpr(f) => for_expr(w, f),
        Expression::HeredocTemplate(_) => {
            let mut e = e.clone();
            e.decor_mut().clear();
            w.text(e.to_string().trim_end_matches('\n'));
            w.need_newline = true;
        }
        _ => {
            // Literals, variables and quoted templates: as written.
            let mut e = e.clone();
            e.decor_mut().clear();
            w.text(&e.to_string());
        }
    }
}

/// An operand: its comments, then `sep` when there are none, then the expression.
fn expr_with(w: &mut Writer, e: &Expression, sep: Sep) {
    value(w, e, sep);
}

/// Comma-separated items between brackets, keeping the user's line breaks.
fn list<'a>(
    w: &mut Writer,
    items: impl Iterator<Item = &'a Expression>,
    trailing_comma: bool,
    trailing: &str,
    close: &str,
) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            w.text(",");
        }
        value(w, item, if i == 0 { Sep::None } else { Sep::Space });
    }
    if trailing_comma {
        w.text(",");
    }
    trivia(w, trailing, Sep::None);
    w.close(close);
}

fn array(w: &mut Writer, a: &Array) {
    w.open("[");
    list(w, a.iter(), a.trailing_comma(), a.trailing(), "]");
}

fn func_call(w: &mut Writer, f: &FuncCall) {
    for ns in &f.name.namespace {
        w.text(ns.value().as_str());
        w.text("::");
    }
    w.text(f.name.name.value().as_str());
    w.open("(");
    let args = &f.args;
    for (i, item) in args.iter().enumerate() {
        if i > 0 {
            w.text(",");
        }
        value(w, item, if i == 0 { Sep::None } else { Sep::Space });
    }
    if args.expand_final() {
        w.text("...");
    } else if args.trailing_comma() {
        w.text(",");
    }
    trivia(w, args.trailing(), Sep::None);
    w.close(")");
}

fn object_key(k: &ObjectKey) -> (String, &Decor) {
    match k {
        ObjectKey::Ident(i) => (i.value().as_str().to_string(), i.decor()),
        ObjectKey::Expression(e) => {
            let (text, _) = render_expr(e, 0);
            (text, e.decor())
        }
    }
}

fn object(w: &mut Writer, o: &Object) {
    w.open("{");
    let entries: Vec<_> = o.iter().collect();
    // Align `=` within runs of entries that each start a line and hold one line; a blank
    // line, a comment or a multi-line value ends a run.
    let mut widths = vec![0usize; entries.len()];
    let mut run: Vec<usize> = Vec::new();
    let flush = |run: &mut Vec<usize>, widths: &mut Vec<usize>| {
        let max = run
            .iter()
            .map(|&i| object_key(entries[i].0).0.chars().count())
            .max()
            .unwrap_or(0);
        for &i in run.iter() {
            widths[i] = max;
        }
        run.clear();
    };
    for (i, (k, v)) in entries.iter().enumerate() {
        let prefix = decor_prefix(object_key(k).1);
        let after_newline =
            i > 0 && entries[i - 1].1.terminator() == ObjectValueTerminator::Newline;
        let newlines = prefix.matches('\n').count() + usize::from(after_newline);
        if newlines != 1 || breaks_alignment(prefix.trim_start_matches([' ', '\t', '\n'])) {
            flush(&mut run, &mut widths);
        }
        if render_expr(v.expr(), w.depth).0.contains('\n') {
            flush(&mut run, &mut widths);
        } else {
            run.push(i);
        }
    }
    flush(&mut run, &mut widths);
    for ((k, v), width) in entries.iter().zip(widths) {
        let (key, decor) = object_key(k);
        trivia(w, decor_prefix(decor), Sep::Space);
        w.text(&key);
        trivia(w, decor_suffix(decor), Sep::None);
        let pad = width.saturating_sub(key.chars().count());
        match v.assignment() {
            ObjectValueAssignment::Equals => {
                w.space();
                w.text(&" ".repeat(pad));
                w.text("=");
            }
            ObjectValueAssignment::Colon => w.text(":"),
        }
        value(w, v.expr(), Sep::Space);
        match v.terminator() {
            ObjectValueTerminator::Comma => w.text(","),
            ObjectValueTerminator::Newline => w.newline(),
            ObjectValueTerminator::None => {}
        }
    }
    trivia(
        w,
        o.trailing(),
        if o.is_empty() { Sep::None } else { Sep::Space },
    );
    w.close("}");
}

fn for_expr(w: &mut Writer, f: &ForExpr) {
    let object = f.key_expr.is_some();
    w.open(if object { "{" } else { "[" });
    trivia(
        w,
        decor_prefix(f.intro.decor()),
        if object { Sep::Space } else { Sep::None },
    );
    w.text("for");
    if let Some(k) = &f.intro.key_var {
        trivia(w, decor_prefix(k.decor()), Sep::Space);
        w.text(k.value().as_str());
        trivia(w, decor_suffix(k.decor()), Sep::None);
        w.text(",");
    }
    let v = &f.intro.value_var;
    trivia(w, decor_prefix(v.decor()), Sep::Space);
    w.text(v.value().as_str());
    trivia(w, decor_suffix(v.decor()), Sep::Space);
    w.text("in");
    value(w, &f.intro.collection_expr, Sep::Space);
    w.space();
    w.text(":");
    trivia(w, decor_suffix(f.intro.decor()), Sep::None);
    if let Some(k) = &f.key_expr {
        value(w, k, Sep::Space);
        w.space();
        w.text("=>");
    }
    value(w, &f.value_expr, Sep::Space);
    if f.grouping {
        w.text("...");
    }
    if let Some(c) = &f.cond {
        trivia(w, decor_prefix(c.decor()), Sep::Space);
        w.text("if");
        value(w, &c.expr, Sep::Space);
        trivia(w, decor_suffix(c.decor()), Sep::None);
    }
    if object {
        w.space();
    }
    w.close(if object { "}" } else { "]" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        let out = format(s).unwrap();
        assert_eq!(format(&out).unwrap(), out, "not idempotent:\n{out}");
        out
    }

    #[test]
    fn indents_and_aligns() {
        let src = "source \"null\" \"a\" {\ncommunicator=\"none\"\n    x_long_name =   1\n}\n";
        assert_eq!(
            fmt(src),
            "source \"null\" \"a\" {\n  communicator = \"none\"\n  x_long_name  = 1\n}\n"
        );
    }

    #[test]
    fn blank_lines_and_comments_break_runs_and_are_kept() {
        let src = "# top\nvariable \"x\" {\n  type = string # why\n\n  // doc\n  default=\"a\"\n  description = \"d\"\n}\n";
        assert_eq!(
            fmt(src),
            "# top\nvariable \"x\" {\n  type = string # why\n\n  // doc\n  default     = \"a\"\n  description = \"d\"\n}\n"
        );
    }

    #[test]
    fn arrays_objects_keep_line_breaks() {
        let src = "build {\nsources = [\"source.null.a\",\n# inside\n\"source.null.b\", # b\n]\ntags = {\na = 1 # c\nbbb: 2,\n}\n}\n";
        assert_eq!(
            fmt(src),
            "build {\n  sources = [\"source.null.a\",\n    # inside\n    \"source.null.b\", # b\n  ]\n  tags = {\n    a   = 1 # c\n    bbb: 2,\n  }\n}\n"
        );
    }

    #[test]
    fn spacing_in_expressions() {
        assert_eq!(
            fmt("a=[1,2 ,3]\nb=foo( 1,var.x[ 0 ] )\nc=x ? 1:2\nd=1+2*3\ne=[for s in var.l: upper(s) if s!=\"\"]\n"),
            "a = [1, 2, 3]\nb = foo(1, var.x[0])\nc = x ? 1 : 2\nd = 1 + 2 * 3\ne = [for s in var.l : upper(s) if s != \"\"]\n"
        );
    }

    #[test]
    fn for_expressions_and_block_comments() {
        assert_eq!(
            fmt("a={for k,v in m: k=>v...}\n/* c */ b=1\n"),
            "a = { for k, v in m : k => v... }\n/* c */ b = 1\n"
        );
    }

    #[test]
    fn trailing_comments_align() {
        assert_eq!(
            fmt("a = 1 # one\nbbb = \"x\" # two\nc = 3\nd = 4 # four\n\ne = 55 # five\nf = 6 # six\n"),
            "a   = 1   # one\nbbb = \"x\" # two\nc   = 3\nd   = 4 # four\n\ne = 55 # five\nf = 6  # six\n"
        );
    }

    #[test]
    fn heredocs_are_verbatim() {
        let src = "x {\n  script = <<EOF\n   keep   this\nEOF\n  y = 1\n}\n";
        assert_eq!(fmt(src), src);
    }

    #[test]
    fn one_line_blocks_stay_one_line() {
        assert_eq!(
            fmt("source \"null\" \"a\" {communicator=\"none\"}\nx {}\n"),
            "source \"null\" \"a\" { communicator = \"none\" }\nx {}\n"
        );
    }

    #[test]
    fn multiline_value_ends_a_run() {
        let src = "a = 1\nbbbb = [\n1,\n]\ncc = 2\nd=3\n";
        assert_eq!(fmt(src), "a = 1\nbbbb = [\n  1,\n]\ncc = 2\nd  = 3\n");
    }

    #[test]
    fn formatting_changes_layout_only() {
        let src = include_str!("../tests/fixtures/fmt-stress.hcl");
        let out = fmt(src);
        assert_ne!(out, src, "the fixture should need formatting");
        let before: hcl::Body = hcl::from_str(src).unwrap();
        let after: hcl::Body = hcl::from_str(&out).unwrap();
        assert_eq!(before, after, "formatted:\n{out}");
        for comment in ["// leading", "# first", "/* inline */", "# trailing"] {
            assert!(out.contains(comment), "lost {comment}:\n{out}");
        }
    }

    #[test]
    fn invalid_input_is_an_error() {
        let err = format("a = [\n").unwrap_err();
        assert!(err.line >= 1, "{err}");
    }
}
