//! The JSON form (`*.pkr.json`, `*.pkrvars.json`): a small span-keeping JSON reader, and the
//! mapping of HCL's JSON syntax onto bodies (object keys are block types or attributes, each block
//! label one more level of objects, strings are templates).

use std::ops::Range;

use hcl::expr::TemplateExpr;
use hcl::{Expression, Object, ObjectKey};

use crate::diag::{Diagnostic, Diagnostics, FileId, Span};
use crate::plan::{ConfigBody, RawAttr, RawBlock};

/// A JSON value and the bytes it was read from.
#[derive(Debug)]
struct Node {
    value: Json,
    span: Range<usize>,
}

#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(hcl::Number),
    String(String),
    Array(Vec<Node>),
    /// Keys with their spans, in document order.
    Object(Vec<(String, Range<usize>, Node)>),
}

/// Reads a JSON document that serde_json has already accepted, keeping spans.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn value(&mut self) -> Option<Node> {
        self.skip_ws();
        let start = self.pos;
        let value = match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek()? {
                        b'}' => break,
                        b',' => self.pos += 1,
                        _ => {
                            let key_start = self.pos;
                            let key = self.string()?;
                            let key_span = key_start..self.pos;
                            self.skip_ws();
                            self.pos += 1; // ':'
                            items.push((key, key_span, self.value()?));
                        }
                    }
                }
                self.pos += 1;
                Json::Object(items)
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek()? {
                        b']' => break,
                        b',' => self.pos += 1,
                        _ => items.push(self.value()?),
                    }
                }
                self.pos += 1;
                Json::Array(items)
            }
            b'"' => Json::String(self.string()?),
            b't' => self.word("true", Json::Bool(true))?,
            b'f' => self.word("false", Json::Bool(false))?,
            b'n' => self.word("null", Json::Null)?,
            _ => {
                let len = self.text[self.pos..]
                    .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .unwrap_or(self.text.len() - self.pos);
                let number: serde_json::Number =
                    self.text[self.pos..self.pos + len].parse().ok()?;
                self.pos += len;
                Json::Number(*hcl::to_value(number).ok()?.as_number()?)
            }
        };
        Some(Node {
            value,
            span: start..self.pos,
        })
    }

    fn word(&mut self, word: &str, value: Json) -> Option<Json> {
        self.text[self.pos..].starts_with(word).then(|| {
            self.pos += word.len();
            value
        })
    }

    /// A string literal, decoded by serde_json.
    fn string(&mut self) -> Option<String> {
        let bytes = self.text.as_bytes();
        let mut end = self.pos + 1;
        while *bytes.get(end)? != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let decoded = serde_json::from_str(&self.text[self.pos..=end]).ok()?;
        self.pos = end + 1;
        Some(decoded)
    }
}

/// A JSON value as an HCL expression; strings with `${` or `%{` are templates.
fn expression(node: &Node) -> Expression {
    match &node.value {
        Json::Null => Expression::Null,
        Json::Bool(b) => Expression::Bool(*b),
        Json::Number(n) => Expression::Number(*n),
        Json::String(s) if s.contains("${") || s.contains("%{") => {
            Expression::TemplateExpr(Box::new(TemplateExpr::QuotedString(s.clone())))
        }
        Json::String(s) => Expression::String(s.clone()),
        Json::Array(items) => Expression::Array(items.iter().map(expression).collect()),
        Json::Object(items) => Expression::Object(
            items
                .iter()
                .map(|(k, _, v)| {
                    (
                        ObjectKey::Expression(Expression::String(k.clone())),
                        expression(v),
                    )
                })
                .collect::<Object<ObjectKey, Expression>>(),
        ),
    }
}

/// How the JSON form maps object keys to blocks in one kind of body.
#[derive(Clone, Copy)]
enum Schema {
    Top,
    Packer,
    Variable,
    Build,
    Chain,
    /// Component bodies and everything else: attributes only.
    Attrs,
}

impl Schema {
    /// The block types of this body: ident → (number of labels, schema of the block's body).
    fn block(self, key: &str) -> Option<(usize, Schema)> {
        match (self, key) {
            (Schema::Top, "packer") => Some((0, Schema::Packer)),
            (Schema::Top, "variable") => Some((1, Schema::Variable)),
            (Schema::Top, "locals") => Some((0, Schema::Attrs)),
            (Schema::Top, "local") => Some((1, Schema::Attrs)),
            (Schema::Top, "source") => Some((2, Schema::Attrs)),
            (Schema::Top, "build") => Some((0, Schema::Build)),
            (Schema::Packer, "required_plugins") => Some((0, Schema::Attrs)),
            (Schema::Variable, "validation") => Some((0, Schema::Attrs)),
            (Schema::Build, "source") => Some((1, Schema::Attrs)),
            (Schema::Build, "provisioner" | "post-processor" | "error-cleanup-provisioner") => {
                Some((1, Schema::Attrs))
            }
            (Schema::Build, "post-processors") => Some((0, Schema::Chain)),
            (Schema::Chain, "post-processor") => Some((1, Schema::Attrs)),
            _ => None,
        }
    }
}

/// Parses the JSON form of a template.
pub fn parse_template(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<ConfigBody> {
    parse(file, text, Schema::Top, diags)
}

/// Parses a JSON var file: an object of variable values.
pub fn parse_values(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<ConfigBody> {
    parse(file, text, Schema::Attrs, diags)
}

fn parse(file: FileId, text: &str, schema: Schema, diags: &mut Diagnostics) -> Option<ConfigBody> {
    if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let offset = offset_of(text, err.line(), err.column());
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        diags.push(
            Diagnostic::error(format!("invalid JSON: {message}")).at(Span::new(
                file,
                offset,
                (offset + 1).min(text.len()),
            )),
        );
        return None;
    }
    let root = Reader { text, pos: 0 }.value()?;
    let span = |r: &Range<usize>| Span::new(file, r.start, r.end);
    if !matches!(root.value, Json::Object(_)) {
        diags.push(Diagnostic::error("a JSON document must be an object").at(span(&root.span)));
        return None;
    }
    Some(Converter { file, diags }.body(&root, schema))
}

/// The byte offset of a one-based line and column (serde_json's error position).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut offset = (line_start + column.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Labels gathered on the way down to a block body.
#[derive(Clone)]
struct Pending<'a> {
    ident: &'a str,
    ident_span: Span,
    labels: Vec<String>,
    label_spans: Vec<Span>,
}

struct Converter<'d> {
    file: FileId,
    diags: &'d mut Diagnostics,
}

impl Converter<'_> {
    fn span(&self, r: &Range<usize>) -> Span {
        Span::new(self.file, r.start, r.end)
    }

    fn body(&mut self, node: &Node, schema: Schema) -> ConfigBody {
        let mut out = ConfigBody {
            attrs: Vec::new(),
            blocks: Vec::new(),
            span: self.span(&node.span),
        };
        let Json::Object(items) = &node.value else {
            self.diags.push(
                Diagnostic::error("expected a JSON object for a block body")
                    .at(out.span)
                    .with_label("not an object"),
            );
            return out;
        };
        for (key, key_span, value) in items {
            if key == "//" {
                continue;
            }
            let key_span = self.span(key_span);
            match schema.block(key) {
                Some((labels, inner)) => {
                    let pending = Pending {
                        ident: key,
                        ident_span: key_span,
                        labels: Vec::new(),
                        label_spans: Vec::new(),
                    };
                    self.blocks(pending, value, labels, inner, &mut out.blocks);
                }
                None => out.attrs.push(RawAttr {
                    key: key.clone(),
                    key_span,
                    expr: expression(value),
                    span: self.span(&value.span),
                }),
            }
        }
        out
    }

    /// Reads `labels` levels of nested objects (or arrays of them) down to block bodies.
    fn blocks(
        &mut self,
        pending: Pending<'_>,
        node: &Node,
        labels: usize,
        schema: Schema,
        out: &mut Vec<RawBlock>,
    ) {
        if let Json::Array(items) = &node.value {
            for item in items {
                self.blocks(pending.clone(), item, labels, schema, out);
            }
            return;
        }
        if labels == 0 {
            let body = self.body(node, schema);
            out.push(RawBlock {
                ident: pending.ident.to_string(),
                ident_span: pending.ident_span,
                labels: pending.labels,
                label_spans: pending.label_spans,
                span: body.span,
                body,
            });
            return;
        }
        let Json::Object(items) = &node.value else {
            self.diags.push(
                Diagnostic::error(format!(
                    "`{}` in the JSON form must be an object keyed by its label",
                    pending.ident
                ))
                .at(self.span(&node.span)),
            );
            return;
        };
        for (label, label_span, inner) in items {
            let mut next = pending.clone();
            next.labels.push(label.clone());
            next.label_spans.push(self.span(label_span));
            self.blocks(next, inner, labels - 1, schema, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_labels_to_blocks() {
        let text = r#"{"source": {"null": {"a": {"communicator": "none"}}}, "build": [{"sources": ["source.null.a"]}]}"#;
        let mut diags = Diagnostics::new();
        let body = parse_template(FileId(0), text, &mut diags).unwrap();
        assert!(diags.is_empty());
        assert_eq!(body.blocks.len(), 2);
        assert_eq!(body.blocks[0].labels, ["null", "a"]);
        let label = body.blocks[0].label_spans[1];
        assert_eq!(&text[label.start..label.end], "\"a\"");
        assert_eq!(body.blocks[0].body.attrs[0].key, "communicator");
        assert_eq!(body.blocks[1].ident, "build");
        assert_eq!(body.blocks[1].body.attrs[0].key, "sources");
    }

    #[test]
    fn strings_are_decoded_then_read_as_templates() {
        let text = "\n  {\"locals\": {\"a\": \"${upper(\\\"x\\\")}\\n\", \"b\": 1.5e1}}\n\n";
        let mut diags = Diagnostics::new();
        let body = parse_template(FileId(0), text, &mut diags).unwrap();
        assert!(diags.is_empty(), "{diags}");
        let a = &body.blocks[0].body.attrs[0];
        assert_eq!(&text[a.key_span.start..a.key_span.end], "\"a\"");
        let value = hcl::eval::Evaluate::evaluate(&a.expr, &{
            let mut ctx = hcl::eval::Context::new();
            super::super::funcs::declare(&mut ctx);
            ctx
        })
        .unwrap();
        assert_eq!(value, hcl::Value::from("X\n"));
        let b = &body.blocks[0].body.attrs[1];
        assert_eq!(
            b.expr,
            Expression::Number(hcl::Number::from_f64(15.0).unwrap())
        );
    }

    #[test]
    fn invalid_json_has_a_location() {
        let text = "{\n  \"a\": 1,\n}\n";
        let mut diags = Diagnostics::new();
        assert!(parse_template(FileId(0), text, &mut diags).is_none());
        let span = diags.0[0].span.unwrap();
        assert_eq!(&text[span.start..span.end], "}");
    }
}
