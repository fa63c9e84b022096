//! Syntax: turns HCL text (via `hcl-edit`, which keeps spans) or the JSON form into generic
//! [`ConfigBody`]s whose every attribute and block knows where it was written.

use std::ops::Range;

use hcl_edit::expr::{Expression as EditExpr, ObjectKey};
use hcl_edit::structure::{Body, Structure};
use hcl_edit::Span as _;

use crate::diag::{Diagnostic, Diagnostics, FileId, Span};
use crate::plan::{ConfigBody, RawAttr, RawBlock};

fn span(file: FileId, range: Option<Range<usize>>, fallback: Span) -> Span {
    range.map_or(fallback, |r| Span::new(file, r.start, r.end))
}

/// A parse error as a diagnostic pointing at the offending character.
fn parse_error(file: FileId, text: &str, err: &hcl_edit::parser::Error) -> Diagnostic {
    let offset = err.location().offset().min(text.len());
    let end = text[offset..]
        .chars()
        .next()
        .map_or(offset, |c| offset + c.len_utf8());
    let message = err.message().replace('\n', "; ");
    Diagnostic::error(format!("syntax error: {message}"))
        .at(Span::new(file, offset, end))
        .with_label("unexpected input here")
}

/// Parses an HCL file into a body; `None` (and a diagnostic) on a syntax error.
pub fn parse_hcl(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<ConfigBody> {
    match hcl_edit::parser::parse_body(text) {
        Ok(body) => Some(from_edit_body(file, &body, Span::new(file, 0, text.len()))),
        Err(err) => {
            diags.push(parse_error(file, text, &err));
            None
        }
    }
}

fn from_edit_body(file: FileId, body: &Body, whole: Span) -> ConfigBody {
    let mut out = ConfigBody {
        attrs: Vec::new(),
        blocks: Vec::new(),
        span: whole,
    };
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let key_span = span(file, attr.key.span(), whole);
                out.attrs.push(RawAttr {
                    key: attr.key.as_str().to_string(),
                    key_span,
                    expr: hcl::Expression::from(attr.value.clone()),
                    span: span(file, attr.value.span(), key_span),
                });
            }
            Structure::Block(block) => {
                let block_span = span(file, block.span(), whole);
                out.blocks.push(RawBlock {
                    ident: block.ident.as_str().to_string(),
                    ident_span: span(file, block.ident.span(), block_span),
                    labels: block
                        .labels
                        .iter()
                        .map(|l| l.as_str().to_string())
                        .collect(),
                    label_spans: block
                        .labels
                        .iter()
                        .map(|l| span(file, l.span(), block_span))
                        .collect(),
                    body: from_edit_body(file, &block.body, block_span),
                    span: block_span,
                });
            }
        }
    }
    out
}

/// Parses an HCL expression (a `-var` value, a JSON document) with its spans.
pub fn parse_expr(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<EditExpr> {
    // The expression parser rejects trailing whitespace; trimming the end keeps offsets.
    match hcl_edit::parser::parse_expr(text.trim_end()) {
        Ok(expr) => Some(expr),
        Err(err) => {
            diags.push(parse_error(file, text, &err));
            None
        }
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

/// Parses the JSON form (`*.pkr.json`) into a body, following HCL's JSON syntax as Packer uses it.
/// The document is read as an HCL expression, which keeps spans; strings are templates.
pub fn parse_json(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<ConfigBody> {
    parse_json_as(file, text, Schema::Top, diags)
}

/// Parses a JSON var file (`*.pkrvars.json`): an object of variable values.
pub fn parse_json_values(file: FileId, text: &str, diags: &mut Diagnostics) -> Option<ConfigBody> {
    parse_json_as(file, text, Schema::Attrs, diags)
}

fn parse_json_as(
    file: FileId,
    text: &str,
    schema: Schema,
    diags: &mut Diagnostics,
) -> Option<ConfigBody> {
    // HCL's expression syntax is laxer than JSON (trailing commas, comments): check JSON first.
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
    let expr = parse_expr(file, text, diags)?;
    let whole = Span::new(file, 0, text.len());
    match &expr {
        EditExpr::Object(_) => Some(json_body(file, &expr, schema, whole, diags)),
        other => {
            diags.push(
                Diagnostic::error("a JSON document must be an object").at(span(
                    file,
                    other.span(),
                    whole,
                )),
            );
            None
        }
    }
}

/// The byte offset of a one-based line and column (serde_json's error position).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let offset = (line_start + column.saturating_sub(1)).min(text.len());
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn json_body(
    file: FileId,
    expr: &EditExpr,
    schema: Schema,
    fallback: Span,
    diags: &mut Diagnostics,
) -> ConfigBody {
    let whole = span(file, expr.span(), fallback);
    let mut out = ConfigBody {
        attrs: Vec::new(),
        blocks: Vec::new(),
        span: whole,
    };
    let EditExpr::Object(object) = expr else {
        diags.push(
            Diagnostic::error("expected a JSON object for a block body")
                .at(whole)
                .with_label("not an object"),
        );
        return out;
    };
    for (key, value) in object.iter() {
        let (name, key_span) = match key {
            ObjectKey::Ident(ident) => (ident.as_str().to_string(), ident.span()),
            ObjectKey::Expression(EditExpr::String(s)) => (s.as_str().to_string(), s.span()),
            ObjectKey::Expression(other) => {
                diags.push(
                    Diagnostic::error("object keys in the JSON form must be strings").at(span(
                        file,
                        other.span(),
                        whole,
                    )),
                );
                continue;
            }
        };
        if name == "//" {
            continue;
        }
        let key_span = span(file, key_span, whole);
        let value = value.expr();
        match schema.block(&name) {
            Some((labels, inner)) => {
                let block = PendingBlock {
                    ident: &name,
                    ident_span: key_span,
                    labels: Vec::new(),
                    label_spans: Vec::new(),
                };
                json_blocks(file, block, value, labels, inner, &mut out.blocks, diags);
            }
            None => out.attrs.push(RawAttr {
                key: name,
                key_span,
                expr: hcl::Expression::from(value.clone()),
                span: span(file, value.span(), key_span),
            }),
        }
    }
    out
}

struct PendingBlock<'a> {
    ident: &'a str,
    ident_span: Span,
    labels: Vec<String>,
    label_spans: Vec<Span>,
}

/// Reads `labels` levels of nested objects (or arrays of them) down to block bodies.
fn json_blocks(
    file: FileId,
    pending: PendingBlock<'_>,
    value: &EditExpr,
    labels: usize,
    schema: Schema,
    out: &mut Vec<RawBlock>,
    diags: &mut Diagnostics,
) {
    let here = span(file, value.span(), pending.ident_span);
    if let EditExpr::Array(items) = value {
        for item in items.iter() {
            let again = PendingBlock {
                labels: pending.labels.clone(),
                label_spans: pending.label_spans.clone(),
                ..pending
            };
            json_blocks(file, again, item, labels, schema, out, diags);
        }
        return;
    }
    if labels == 0 {
        let body = json_body(file, value, schema, here, diags);
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
    let EditExpr::Object(object) = value else {
        diags.push(
            Diagnostic::error(format!(
                "`{}` in the JSON form must be an object keyed by its label",
                pending.ident
            ))
            .at(here),
        );
        return;
    };
    for (key, inner) in object.iter() {
        let (label, label_span) =
            match key {
                ObjectKey::Ident(ident) => (ident.as_str().to_string(), ident.span()),
                ObjectKey::Expression(EditExpr::String(s)) => (s.as_str().to_string(), s.span()),
                ObjectKey::Expression(other) => {
                    diags.push(
                        Diagnostic::error("block labels in the JSON form must be strings")
                            .at(span(file, other.span(), here)),
                    );
                    continue;
                }
            };
        let mut next = PendingBlock {
            labels: pending.labels.clone(),
            label_spans: pending.label_spans.clone(),
            ..pending
        };
        next.labels.push(label);
        next.label_spans.push(span(file, label_span, here));
        json_blocks(file, next, inner.expr(), labels - 1, schema, out, diags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_blocks_keep_spans() {
        let text = "source \"null\" \"a\" {\n  communicator = \"none\"\n}\n";
        let mut diags = Diagnostics::new();
        let body = parse_hcl(FileId(0), text, &mut diags).unwrap();
        let block = &body.blocks[0];
        assert_eq!(block.labels, ["null", "a"]);
        let label = block.label_spans[1];
        assert_eq!(&text[label.start..label.end], "\"a\"");
        let attr = &block.body.attrs[0];
        assert_eq!(&text[attr.span.start..attr.span.end], "\"none\"");
    }

    #[test]
    fn json_form_maps_labels_to_blocks() {
        let text = r#"{"source": {"null": {"a": {"communicator": "none"}}}, "build": [{"sources": ["source.null.a"]}]}"#;
        let mut diags = Diagnostics::new();
        let body = parse_json(FileId(0), text, &mut diags).unwrap();
        assert!(diags.is_empty());
        assert_eq!(body.blocks.len(), 2);
        assert_eq!(body.blocks[0].labels, ["null", "a"]);
        assert_eq!(body.blocks[0].body.attrs[0].key, "communicator");
        assert_eq!(body.blocks[1].ident, "build");
        assert_eq!(body.blocks[1].body.attrs[0].key, "sources");
    }

    #[test]
    fn syntax_error_has_a_location() {
        let mut diags = Diagnostics::new();
        assert!(parse_hcl(FileId(0), "variable \"x\" {\n  default = \n}\n", &mut diags).is_none());
        let span = diags.0[0].span.unwrap();
        assert!(span.start > 10, "{span:?}");
    }
}
