//! The template model: variables, locals, sources and build blocks read from generic bodies, with
//! every structural problem (unknown block, unknown attribute, wrong labels, duplicates) reported.

use std::path::PathBuf;

use hcl::eval::{Context, Evaluate};
use hcl::Value;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::plan::{ConfigBody, RawAttr, RawBlock};

use super::types::Type;

/// A `variable` block.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    /// The name label.
    pub span: Span,
    pub ty: Type,
    pub default: Option<RawAttr>,
    pub description: Option<String>,
    pub sensitive: bool,
    pub nullable: bool,
    pub validations: Vec<Validation>,
}

#[derive(Debug, Clone)]
pub struct Validation {
    pub condition: RawAttr,
    pub error_message: RawAttr,
}

/// One local value, from `locals { name = ... }` or `local "name" { expression = ... }`.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub span: Span,
    pub expr: RawAttr,
    pub sensitive: bool,
}

/// A `source "TYPE" "NAME"` block.
#[derive(Debug, Clone)]
pub struct Source {
    pub ty: String,
    pub name: String,
    pub type_span: Span,
    pub name_span: Span,
    pub body: ConfigBody,
    pub span: Span,
}

/// A `build` block.
#[derive(Debug, Clone)]
pub struct BuildBlock {
    pub name: Option<String>,
    pub description: Option<String>,
    pub sources: Vec<SourceRef>,
    pub provisioners: Vec<RawBlock>,
    pub error_cleanup_provisioner: Option<RawBlock>,
    /// Post-processor chains; a lone `post-processor` block is a chain of one.
    pub post_processors: Vec<Vec<RawBlock>>,
    pub span: Span,
}

/// A source used by a build: from `sources = [...]` or a `source "TYPE.NAME" { ... }` block.
#[derive(Debug, Clone)]
pub struct SourceRef {
    pub ty: String,
    pub name: String,
    pub span: Span,
    /// The `name` attribute of a `source` block in a build, which renames the build's source.
    pub rename: Option<String>,
    /// Attributes and blocks that override the source's.
    pub overrides: Option<ConfigBody>,
}

/// A variable values file (`*.pkrvars.hcl`, `*.pkrvars.json`), as name = value attributes.
#[derive(Debug, Clone)]
pub struct VarFile {
    pub path: PathBuf,
    /// Loaded automatically (`*.auto.pkrvars.*`) rather than given with `-var-file`.
    pub auto: bool,
    pub values: Vec<RawAttr>,
}

/// Everything declared in a template's files.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub variables: Vec<Variable>,
    pub locals: Vec<Local>,
    pub sources: Vec<Source>,
    pub builds: Vec<BuildBlock>,
}

/// Evaluates an expression that must be a constant (no references, no functions).
fn constant(attr: &RawAttr, diags: &mut Diagnostics) -> Option<Value> {
    match attr.expr.evaluate(&Context::new()) {
        Ok(v) => Some(v),
        Err(_) => {
            diags.push(
                Diagnostic::error(format!("`{}` must be a constant value", attr.key))
                    .at(attr.span)
                    .with_label("references and function calls are not allowed here"),
            );
            None
        }
    }
}

fn constant_string(attr: &RawAttr, diags: &mut Diagnostics) -> Option<String> {
    match constant(attr, diags)? {
        Value::String(s) => Some(s),
        _ => {
            diags.push(Diagnostic::error(format!("`{}` must be a string", attr.key)).at(attr.span));
            None
        }
    }
}

fn constant_bool(attr: &RawAttr, diags: &mut Diagnostics) -> Option<bool> {
    match constant(attr, diags)? {
        Value::Bool(b) => Some(b),
        _ => {
            diags.push(Diagnostic::error(format!("`{}` must be a bool", attr.key)).at(attr.span));
            None
        }
    }
}

/// Reports attributes and blocks of `body` that are not in the allowed lists, and repeated
/// attributes. `what` names the enclosing block for messages.
pub fn check_body(
    body: &ConfigBody,
    what: &str,
    attrs: &[&str],
    blocks: &[&str],
    diags: &mut Diagnostics,
) {
    for (i, attr) in body.attrs.iter().enumerate() {
        if body.attrs[..i].iter().any(|a| a.key == attr.key) {
            diags.push(
                Diagnostic::error(format!("duplicate attribute `{}` in {what}", attr.key))
                    .at(attr.key_span)
                    .with_label("set again here"),
            );
            continue;
        }
        if !attrs.contains(&attr.key.as_str()) {
            let mut d = Diagnostic::error(format!("unknown attribute `{}` in {what}", attr.key))
                .at(attr.key_span)
                .with_label("not expected here");
            d.help = did_you_mean(&attr.key, attrs.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| {
                    (!attrs.is_empty()).then(|| format!("expected one of: {}", attrs.join(", ")))
                });
            diags.push(d);
        }
    }
    for block in &body.blocks {
        if !blocks.contains(&block.ident.as_str()) {
            let mut d = Diagnostic::error(format!("unknown block `{}` in {what}", block.ident))
                .at(block.ident_span)
                .with_label("not expected here");
            d.help = did_you_mean(&block.ident, blocks.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| {
                    (!blocks.is_empty()).then(|| format!("expected one of: {}", blocks.join(", ")))
                });
            diags.push(d);
        }
    }
}

/// Checks that `block` has exactly the labels named in `names`.
fn check_labels(block: &RawBlock, names: &[&str], diags: &mut Diagnostics) -> bool {
    if block.labels.len() == names.len() {
        return true;
    }
    let expected = if names.is_empty() {
        "no labels".to_string()
    } else {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    diags.push(
        Diagnostic::error(format!(
            "`{}` block has {} label(s), expected {}",
            block.ident,
            block.labels.len(),
            names.len()
        ))
        .at(block.ident_span)
        .with_help(format!(
            "write it as `{} {expected} {{ ... }}`",
            block.ident
        )),
    );
    false
}

fn attr<'a>(body: &'a ConfigBody, key: &str) -> Option<&'a RawAttr> {
    body.attrs.iter().find(|a| a.key == key)
}

const TOP_BLOCKS: &[&str] = &["packer", "variable", "locals", "local", "source", "build"];

impl Model {
    /// Adds the top-level blocks of one file's body.
    pub fn add_file(&mut self, body: &ConfigBody, diags: &mut Diagnostics) {
        check_body(body, "a template", &[], TOP_BLOCKS, diags);
        for block in &body.blocks {
            match block.ident.as_str() {
                "packer" => packer_block(block, diags),
                "variable" => self.add_variable(block, diags),
                "locals" if check_labels(block, &[], diags) => {
                    // Any name is a local; blocks are not allowed.
                    let names: Vec<&str> =
                        block.body.attrs.iter().map(|a| a.key.as_str()).collect();
                    check_body(&block.body, "`locals`", &names, &[], diags);
                    for a in &block.body.attrs {
                        self.add_local(a.key.clone(), a.key_span, a.clone(), false, diags);
                    }
                }
                "local" => self.add_local_block(block, diags),
                "source" => self.add_source(block, diags),
                "build" => self.add_build(block, diags),
                _ => {}
            }
        }
    }

    fn add_variable(&mut self, block: &RawBlock, diags: &mut Diagnostics) {
        if !check_labels(block, &["NAME"], diags) {
            return;
        }
        let body = &block.body;
        check_body(
            body,
            "`variable`",
            &["type", "default", "description", "sensitive", "nullable"],
            &["validation"],
            diags,
        );
        let name = block.labels[0].clone();
        let span = block.label_spans[0];
        if self.variables.iter().any(|v| v.name == name) {
            diags.push(
                Diagnostic::error(format!("duplicate variable `{name}`"))
                    .at(span)
                    .with_label("declared again here")
                    .with_help("each variable is declared once across all the template's files"),
            );
            return;
        }
        let ty = match attr(body, "type") {
            Some(a) => match Type::parse(&a.expr) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("invalid type for variable `{name}`: {e}"))
                            .at(a.span),
                    );
                    Type::Any
                }
            },
            None => Type::Any,
        };
        let mut validations = Vec::new();
        for v in body.blocks.iter().filter(|b| b.ident == "validation") {
            check_labels(v, &[], diags);
            check_body(
                &v.body,
                "`validation`",
                &["condition", "error_message"],
                &[],
                diags,
            );
            match (attr(&v.body, "condition"), attr(&v.body, "error_message")) {
                (Some(c), Some(m)) => validations.push(Validation {
                    condition: c.clone(),
                    error_message: m.clone(),
                }),
                _ => diags.push(
                    Diagnostic::error("a `validation` block needs `condition` and `error_message`")
                        .at(v.ident_span),
                ),
            }
        }
        self.variables.push(Variable {
            name,
            span,
            ty,
            default: attr(body, "default").cloned(),
            description: attr(body, "description").and_then(|a| constant_string(a, diags)),
            sensitive: attr(body, "sensitive")
                .and_then(|a| constant_bool(a, diags))
                .unwrap_or(false),
            nullable: attr(body, "nullable")
                .and_then(|a| constant_bool(a, diags))
                .unwrap_or(true),
            validations,
        });
    }

    fn add_local(
        &mut self,
        name: String,
        span: Span,
        expr: RawAttr,
        sensitive: bool,
        diags: &mut Diagnostics,
    ) {
        if self.locals.iter().any(|l| l.name == name) {
            diags.push(
                Diagnostic::error(format!("duplicate local `{name}`"))
                    .at(span)
                    .with_label("defined again here"),
            );
            return;
        }
        self.locals.push(Local {
            name,
            span,
            expr,
            sensitive,
        });
    }

    fn add_local_block(&mut self, block: &RawBlock, diags: &mut Diagnostics) {
        if !check_labels(block, &["NAME"], diags) {
            return;
        }
        check_body(
            &block.body,
            "`local`",
            &["expression", "sensitive"],
            &[],
            diags,
        );
        let Some(expr) = attr(&block.body, "expression") else {
            diags.push(
                Diagnostic::error("a `local` block needs an `expression`").at(block.ident_span),
            );
            return;
        };
        let sensitive = attr(&block.body, "sensitive")
            .and_then(|a| constant_bool(a, diags))
            .unwrap_or(false);
        let mut expr = expr.clone();
        expr.key = block.labels[0].clone();
        self.add_local(
            block.labels[0].clone(),
            block.label_spans[0],
            expr,
            sensitive,
            diags,
        );
    }

    fn add_source(&mut self, block: &RawBlock, diags: &mut Diagnostics) {
        if !check_labels(block, &["TYPE", "NAME"], diags) {
            return;
        }
        let (ty, name) = (block.labels[0].clone(), block.labels[1].clone());
        if self.sources.iter().any(|s| s.ty == ty && s.name == name) {
            diags.push(
                Diagnostic::error(format!("duplicate source `{ty}.{name}`"))
                    .at(block.label_spans[1])
                    .with_label("defined again here"),
            );
            return;
        }
        self.sources.push(Source {
            ty,
            name,
            type_span: block.label_spans[0],
            name_span: block.label_spans[1],
            body: block.body.clone(),
            span: block.span,
        });
    }

    fn add_build(&mut self, block: &RawBlock, diags: &mut Diagnostics) {
        if !check_labels(block, &[], diags) {
            return;
        }
        let body = &block.body;
        check_body(
            body,
            "`build`",
            &["name", "description", "sources"],
            &[
                "source",
                "provisioner",
                "post-processor",
                "post-processors",
                "error-cleanup-provisioner",
            ],
            diags,
        );
        let mut build = BuildBlock {
            name: attr(body, "name").and_then(|a| constant_string(a, diags)),
            description: attr(body, "description").and_then(|a| constant_string(a, diags)),
            sources: Vec::new(),
            provisioners: Vec::new(),
            error_cleanup_provisioner: None,
            post_processors: Vec::new(),
            span: block.span,
        };
        if let Some(sources) = attr(body, "sources") {
            build.sources.extend(source_list(sources, diags));
        }
        for b in &body.blocks {
            match b.ident.as_str() {
                "source" => {
                    if !check_labels(b, &["TYPE.NAME"], diags) {
                        continue;
                    }
                    let label = &b.labels[0];
                    let Some((ty, name)) =
                        split_source(label.strip_prefix("source.").unwrap_or(label))
                    else {
                        diags.push(
                            Diagnostic::error(format!(
                                "invalid source reference `{}`",
                                b.labels[0]
                            ))
                            .at(b.label_spans[0])
                            .with_help("write it as `source \"TYPE.NAME\" { ... }`"),
                        );
                        continue;
                    };
                    let mut overrides = b.body.clone();
                    let rename = attr(&overrides, "name").and_then(|a| constant_string(a, diags));
                    overrides.attrs.retain(|a| a.key != "name");
                    build.sources.push(SourceRef {
                        ty,
                        name,
                        span: b.label_spans[0],
                        rename,
                        overrides: Some(overrides),
                    });
                }
                "provisioner" if check_labels(b, &["TYPE"], diags) => {
                    build.provisioners.push(b.clone());
                }
                "error-cleanup-provisioner" => {
                    if !check_labels(b, &["TYPE"], diags) {
                        continue;
                    }
                    if build.error_cleanup_provisioner.is_some() {
                        diags.push(
                            Diagnostic::error(
                                "only one `error-cleanup-provisioner` is allowed per build",
                            )
                            .at(b.ident_span),
                        );
                    }
                    build.error_cleanup_provisioner = Some(b.clone());
                }
                "post-processor" if check_labels(b, &["TYPE"], diags) => {
                    build.post_processors.push(vec![b.clone()]);
                }
                "post-processors" => {
                    if !check_labels(b, &[], diags) {
                        continue;
                    }
                    check_body(
                        &b.body,
                        "`post-processors`",
                        &[],
                        &["post-processor"],
                        diags,
                    );
                    let chain: Vec<RawBlock> = b
                        .body
                        .blocks
                        .iter()
                        .filter(|p| {
                            p.ident == "post-processor" && check_labels(p, &["TYPE"], diags)
                        })
                        .cloned()
                        .collect();
                    if !chain.is_empty() {
                        build.post_processors.push(chain);
                    }
                }
                _ => {}
            }
        }
        let has_sources =
            attr(body, "sources").is_some() || body.blocks.iter().any(|b| b.ident == "source");
        if !has_sources {
            diags.push(
                Diagnostic::error("a `build` block needs at least one source")
                    .at(block.ident_span)
                    .with_help("add `sources = [\"source.TYPE.NAME\"]`"),
            );
        }
        self.builds.push(build);
    }
}

/// `TYPE.NAME` into its parts.
fn split_source(s: &str) -> Option<(String, String)> {
    let (ty, name) = s.split_once('.')?;
    (!ty.is_empty() && !name.is_empty() && !name.contains('.'))
        .then(|| (ty.to_string(), name.to_string()))
}

/// Reads `sources = ["source.TYPE.NAME", source.TYPE.NAME, ...]`.
fn source_list(attr: &RawAttr, diags: &mut Diagnostics) -> Vec<SourceRef> {
    let hcl::Expression::Array(items) = &attr.expr else {
        diags.push(
            Diagnostic::error("`sources` must be a list of `source.TYPE.NAME` references")
                .at(attr.span),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let text = match item {
            hcl::Expression::String(s) => s.clone(),
            hcl::Expression::Traversal(_) => item.to_string(),
            other => other.to_string(),
        };
        match text.strip_prefix("source.").and_then(split_source) {
            Some((ty, name)) => out.push(SourceRef {
                ty,
                name,
                span: attr.span,
                rename: None,
                overrides: None,
            }),
            None => diags.push(
                Diagnostic::error(format!("invalid source reference `{text}`"))
                    .at(attr.span)
                    .with_help("write sources as `\"source.TYPE.NAME\"`"),
            ),
        }
    }
    out
}

/// The `packer` block: `required_version` must be a version constraint (it names Packer
/// versions, so it is not checked against Kiln's); plugins are built in.
fn packer_block(block: &RawBlock, diags: &mut Diagnostics) {
    check_labels(block, &[], diags);
    check_body(
        &block.body,
        "`packer`",
        &["required_version"],
        &["required_plugins"],
        diags,
    );
    for attr in block
        .body
        .attrs
        .iter()
        .filter(|a| a.key == "required_version")
    {
        let problem = match &attr.expr {
            hcl::Expression::String(text) => version_constraint_error(text),
            _ => Some("it must be a literal string, such as \">= 1.7.0\"".to_string()),
        };
        if let Some(problem) = problem {
            diags.push(
                Diagnostic::error(format!("invalid `required_version`: {problem}"))
                    .at(attr.span)
                    .with_help(
                        "write constraints as Packer does, separated by commas: \
                         `>= 1.7.0`, `~> 1.9`, `>= 1.7, < 2.0`, `!= 1.8.1`",
                    ),
            );
        }
    }
    for plugins in block
        .body
        .blocks
        .iter()
        .filter(|b| b.ident == "required_plugins")
    {
        for a in &plugins.body.attrs {
            diags.push(
                Diagnostic::warning(format!(
                    "`required_plugins` entry `{}` is ignored: Kiln's builders, provisioners and \
                     post-processors are built in, nothing is installed",
                    a.key
                ))
                .at(a.key_span)
                .with_help(
                    "remove `required_plugins`; a component type Kiln does not have is an error \
                     where it is used",
                ),
            );
        }
    }
}

/// Why `text` is not a version constraint as HashiCorp's go-version reads it (comma-separated
/// `OPERATOR VERSION`, the operator one of `=`, `!=`, `>`, `<`, `>=`, `<=`, `~>` or none, the
/// version `1`, `1.7` or `1.7.0` with an optional `v`, `-prerelease` and `+metadata`); `None`
/// when it is one.
fn version_constraint_error(text: &str) -> Option<String> {
    for part in text.split(',') {
        let part = part.trim();
        let version = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| part.strip_prefix(op))
            .unwrap_or(part)
            .trim();
        let plain = version.strip_prefix('v').unwrap_or(version);
        let core = plain.split(['-', '+']).next().unwrap_or_default();
        let tail_ok = plain[core.len()..]
            .split(['-', '+'])
            .skip(1)
            .all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
        let numbers: Vec<&str> = core.split('.').collect();
        let core_ok = (1..=3).contains(&numbers.len())
            && numbers
                .iter()
                .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !core_ok || !tail_ok {
            return Some(if part.is_empty() {
                format!("`{text}` has an empty constraint")
            } else {
                format!("`{part}` is not a version constraint")
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_constraints_as_packer_does() {
        for ok in [
            ">= 1.7.0",
            "~> 1.9",
            ">= 1.7, < 2.0",
            "1.8.3",
            "= v1.10.0-beta1",
            "!= 1.8.1+ent",
        ] {
            assert_eq!(version_constraint_error(ok), None, "{ok}");
        }
        for bad in [
            ">= 1.x", "", ">= 1.7,", "=> 1.7", "1.2.3.4", "latest", ">= 1.7-",
        ] {
            assert!(version_constraint_error(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn splits_source_references() {
        assert_eq!(split_source("null.a"), Some(("null".into(), "a".into())));
        assert_eq!(split_source("null"), None);
        assert_eq!(split_source("a.b.c"), None);
    }
}
