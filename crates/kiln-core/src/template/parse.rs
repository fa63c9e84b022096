//! HCL syntax: turns HCL text (via `hcl-edit`, which keeps spans) into generic [`ConfigBody`]s
//! whose every attribute and block knows where it was written.

use std::ops::Range;

use hcl_edit::structure::{Body, Structure};
use hcl_edit::Span as _;

use crate::diag::{Diagnostic, Diagnostics, FileId, Span};
use crate::plan::{ConfigBody, RawAttr, RawBlock};

fn span(file: FileId, range: Option<Range<usize>>, fallback: Span) -> Span {
    range.map_or(fallback, |r| Span::new(file, r.start, r.end))
}

/// A parse error as a diagnostic pointing at the offending character.
fn parse_error(file: FileId, text: &str, err: &hcl_edit::parser::Error) -> Diagnostic {
    let mut offset = err.location().offset().min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
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
    fn syntax_error_has_a_location() {
        let mut diags = Diagnostics::new();
        assert!(parse_hcl(FileId(0), "variable \"x\" {\n  default = \n}\n", &mut diags).is_none());
        let span = diags.0[0].span.unwrap();
        assert!(span.start > 10, "{span:?}");
    }
}
