//! Evaluation of expressions and bodies: the HCL context built from a [`Scope`] (variables,
//! locals, `source.*`, `build.*`, `path.*` and the functions), the translation of evaluation errors
//! into diagnostics that point at the reference that failed, and the conversion of HCL values into
//! the JSON values components decode.

use std::collections::BTreeMap;
use std::path::Path;

use hcl::eval::{Context, ErrorKind, Evaluate};
use hcl::expr::Operation;
use hcl::{Expression, Map, Value};

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, SourceMap, Span};
use crate::plan::{Config, ConfigAttr, ConfigBlock, ConfigBody, RawAttr, RuntimeVars, Scope};

use super::funcs;

/// Placeholder for run-time `build.*` values during trial evaluation.
pub const UNKNOWN: &str = "<unknown until the build runs>";

/// The `build.*` keys known only at run time.
pub const RUNTIME_KEYS: &[&str] = &[
    "ID",
    "ConnType",
    "Host",
    "Port",
    "User",
    "Password",
    "SSHPublicKey",
    "SSHPrivateKey",
    "PackerHTTPAddr",
    "PackerRunUUID",
];

fn object<I: IntoIterator<Item = (String, Value)>>(items: I) -> Value {
    Value::Object(items.into_iter().collect::<Map<String, Value>>())
}

fn map_value(map: &BTreeMap<String, Value>) -> Value {
    object(map.iter().map(|(k, v)| (k.clone(), v.clone())))
}

/// A context with the functions, `var.*`, `local.*` and `path.*`: what locals are evaluated in.
pub fn base_context<'a>(
    var: &BTreeMap<String, Value>,
    local: &BTreeMap<String, Value>,
    root: &Path,
    cwd: &Path,
) -> Context<'a> {
    let mut ctx = Context::new();
    funcs::declare(&mut ctx);
    ctx.declare_var("var", map_value(var));
    ctx.declare_var("local", map_value(local));
    ctx.declare_var(
        "path",
        object([
            ("root".to_string(), Value::from(root.display().to_string())),
            ("cwd".to_string(), Value::from(cwd.display().to_string())),
        ]),
    );
    ctx
}

/// The evaluation context for `scope`; `runtime = None` fills run-time values with placeholders.
pub fn context<'a>(scope: &Scope, runtime: Option<&RuntimeVars>) -> Context<'a> {
    let mut ctx = base_context(&scope.var, &scope.local, &scope.path_root, &scope.path_cwd);
    ctx.declare_var(
        "source",
        object([
            ("name".to_string(), Value::from(scope.source_name.clone())),
            ("type".to_string(), Value::from(scope.source_type.clone())),
        ]),
    );
    let mut build: Vec<(String, Value)> =
        vec![("name".to_string(), Value::from(scope.build_name.clone()))];
    for key in RUNTIME_KEYS {
        let value = match runtime {
            Some(rt) => rt.values.get(*key).cloned().unwrap_or_default(),
            None => UNKNOWN.to_string(),
        };
        build.push((key.to_string(), Value::from(value)));
    }
    ctx.declare_var("build", object(build));
    ctx
}

/// Evaluates expressions in one context and reports failures as diagnostics.
pub struct Evaluator<'a> {
    pub ctx: Context<'a>,
    /// Declared variable and local names, for "did you mean" hints. A declared name without a
    /// value in the context failed earlier: references to it say so instead of "undeclared".
    pub var_names: Vec<String>,
    pub local_names: Vec<String>,
    /// When known, errors point at the failing reference inside the expression.
    pub sources: Option<&'a SourceMap>,
}

impl<'a> Evaluator<'a> {
    pub fn new(ctx: Context<'a>, scope: &Scope, sources: Option<&'a SourceMap>) -> Self {
        Evaluator {
            ctx,
            var_names: scope.var.keys().cloned().collect(),
            local_names: scope.local.keys().cloned().collect(),
            sources,
        }
    }

    /// Evaluates one attribute's expression.
    pub fn attr(&self, attr: &RawAttr) -> Result<Value, Diagnostic> {
        fold_try(&attr.expr, &self.ctx)
            .evaluate(&self.ctx)
            .map_err(|err| self.error(&attr.key, attr.span, &err))
    }

    /// Evaluates a body; failures go to `diags` and the attribute is left out.
    pub fn body(&self, body: &ConfigBody, kind: &str, diags: &mut Diagnostics) -> Config {
        let mut attrs = Vec::new();
        for attr in &body.attrs {
            match self.attr(attr) {
                Ok(value) => attrs.push(ConfigAttr {
                    key: attr.key.clone(),
                    value: to_json(&value),
                    span: attr.span,
                }),
                Err(d) => diags.push(d),
            }
        }
        let blocks = body
            .blocks
            .iter()
            .map(|b| ConfigBlock {
                ident: b.ident.clone(),
                labels: b.labels.clone(),
                body: self.body(&b.body, kind, diags),
                span: b.span,
            })
            .collect();
        Config {
            kind: kind.to_string(),
            attrs,
            blocks,
            span: body.span,
        }
    }

    /// Turns an evaluation error into a diagnostic that names the failing reference or function
    /// and, when the source is known, points at it.
    fn error(&self, key: &str, span: Span, err: &hcl::eval::Error) -> Diagnostic {
        let text = match self.sources {
            Some(sources) => sources.slice(span).to_string(),
            None => err.expr().map(|e| e.to_string()).unwrap_or_default(),
        };
        let (diag, needle) = match err.kind() {
            ErrorKind::NoSuchKey(k)
                if self.var_names.contains(k) && mentions(&text, &format!("var.{k}")) =>
            {
                unavailable(&format!("var.{k}"))
            }
            ErrorKind::NoSuchKey(k)
                if self.local_names.contains(k) && mentions(&text, &format!("local.{k}")) =>
            {
                unavailable(&format!("local.{k}"))
            }
            ErrorKind::NoSuchKey(k) if mentions(&text, &format!("var.{k}")) => {
                let mut d =
                    Diagnostic::error(format!("reference to undeclared variable `var.{k}`"))
                        .with_label("not declared");
                d.help = Some(
                    match did_you_mean(k, self.var_names.iter().map(String::as_str)) {
                        Some(s) => format!("did you mean `var.{s}`?"),
                        None => format!("declare it with a `variable \"{k}\" {{}}` block"),
                    },
                );
                (d, format!("var.{k}"))
            }
            ErrorKind::NoSuchKey(k) if mentions(&text, &format!("local.{k}")) => {
                let mut d = Diagnostic::error(format!("reference to undefined local `local.{k}`"))
                    .with_label("not defined");
                d.help = did_you_mean(k, self.local_names.iter().map(String::as_str))
                    .map(|s| format!("did you mean `local.{s}`?"));
                (d, format!("local.{k}"))
            }
            ErrorKind::NoSuchKey(k) if mentions(&text, &format!("build.{k}")) => {
                let mut names = vec!["name"];
                names.extend(RUNTIME_KEYS);
                let mut d = Diagnostic::error(format!("unknown build variable `build.{k}`"));
                d.help = did_you_mean(k, names).map(|s| format!("did you mean `build.{s}`?"));
                (d, format!("build.{k}"))
            }
            ErrorKind::UndefinedVar(name) => {
                let mut d = Diagnostic::error(format!("unknown name `{name}`")).with_help(
                    "references start with `var.`, `local.`, `source.`, `build.` or `path.`",
                );
                if self.var_names.iter().any(|v| v == name.as_str()) {
                    d.help = Some(format!("did you mean `var.{name}`?"));
                }
                (d, name.to_string())
            }
            ErrorKind::UndefinedFunc(name) if ["can", "try"].contains(&name.name.as_str()) => (
                Diagnostic::error(format!(
                    "`{name}` is not supported inside `for` expressions and string templates"
                ))
                .with_help("compute the value in a local first"),
                format!("{name}("),
            ),
            ErrorKind::UndefinedFunc(name) => {
                let name = name.to_string();
                let mut d = Diagnostic::error(format!("call to unknown function `{name}`"))
                    .with_label("no such function");
                d.help = did_you_mean(&name, funcs::NAMES.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"));
                (d, format!("{name}("))
            }
            ErrorKind::FuncCall(name, msg) => (
                Diagnostic::error(format!("invalid call to `{name}()`: {msg}")),
                format!("{name}("),
            ),
            other => (
                Diagnostic::error(format!("cannot evaluate `{key}`: {other}")),
                String::new(),
            ),
        };
        diag.at(narrow(span, &text, &needle))
    }
}

/// The label of diagnostics about references to values that failed earlier; `plan` keeps one
/// per reference.
pub const UNAVAILABLE: &str = "no value because of an earlier error";

fn unavailable(reference: &str) -> (Diagnostic, String) {
    (
        Diagnostic::error(format!("`{reference}` cannot be used")).with_label(UNAVAILABLE),
        reference.to_string(),
    )
}

/// Replaces `can(x)` and `try(a, b, ...)` calls by their results. They must see the errors of
/// their arguments, which `hcl::eval` evaluates before calling any function, so they are resolved
/// first. Inside `for` expressions and string templates they are left alone (their iteration
/// variables are not known yet) and fail with a clear message.
fn fold_try(expr: &Expression, ctx: &Context) -> Expression {
    let fold = |e: &Expression| fold_try(e, ctx);
    match expr {
        Expression::FuncCall(call) if call.name.namespace.is_empty() => {
            let args: Vec<Expression> = call.args.iter().map(fold).collect();
            match (call.name.name.as_str(), args.as_slice()) {
                ("can", [arg]) => Expression::Bool(arg.evaluate(ctx).is_ok()),
                ("try", [.., last]) => args
                    .iter()
                    .find_map(|a| a.evaluate(ctx).ok())
                    .map_or_else(|| last.clone(), Expression::from),
                _ => Expression::FuncCall(Box::new(hcl::expr::FuncCall {
                    args,
                    ..(**call).clone()
                })),
            }
        }
        Expression::Array(items) => Expression::Array(items.iter().map(fold).collect()),
        Expression::Object(object) => {
            Expression::Object(object.iter().map(|(k, v)| (k.clone(), fold(v))).collect())
        }
        Expression::Parenthesis(inner) => Expression::Parenthesis(Box::new(fold(inner))),
        Expression::Conditional(c) => Expression::Conditional(Box::new(hcl::expr::Conditional {
            cond_expr: fold(&c.cond_expr),
            true_expr: fold(&c.true_expr),
            false_expr: fold(&c.false_expr),
        })),
        Expression::Operation(op) => Expression::Operation(Box::new(match &**op {
            Operation::Unary(u) => Operation::Unary(hcl::expr::UnaryOp {
                operator: u.operator,
                expr: fold(&u.expr),
            }),
            Operation::Binary(b) => Operation::Binary(hcl::expr::BinaryOp {
                lhs_expr: fold(&b.lhs_expr),
                operator: b.operator,
                rhs_expr: fold(&b.rhs_expr),
            }),
        })),
        other => other.clone(),
    }
}

/// Whether `text` refers to `reference` (not as part of a longer name).
fn mentions(text: &str, reference: &str) -> bool {
    find_ref(text, reference).is_some()
}

fn find_ref(text: &str, reference: &str) -> Option<usize> {
    text.match_indices(reference).map(|(i, _)| i).find(|&i| {
        let after = text[i + reference.len()..].chars().next();
        let before = text[..i].chars().next_back();
        let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
        let starts_clean = !before.is_some_and(|c| ident(c) || c == '.');
        let ends_clean = reference.ends_with('(') || !after.is_some_and(ident);
        starts_clean && ends_clean
    })
}

/// The part of `span` (whose source is `text`) where `needle` occurs; the whole span otherwise.
pub(super) fn narrow(span: Span, text: &str, needle: &str) -> Span {
    if needle.is_empty() || text.len() != span.end - span.start {
        return span;
    }
    match find_ref(text, needle) {
        Some(i) => {
            let len = needle.trim_end_matches('(').len();
            Span::new(span.file, span.start + i, span.start + i + len)
        }
        None => span,
    }
}

impl ConfigBody {
    /// Evaluates the body for a component of type `kind`. With `runtime = None` this is a trial
    /// evaluation: `build.*` run-time values evaluate to placeholders.
    pub fn evaluate(
        &self,
        scope: &Scope,
        runtime: Option<&RuntimeVars>,
        kind: &str,
    ) -> Result<Config, Diagnostics> {
        let eval = Evaluator::new(context(scope, runtime), scope, None);
        let mut diags = Diagnostics::new();
        let config = eval.body(self, kind, &mut diags);
        if diags.has_errors() {
            Err(diags)
        } else {
            Ok(config)
        }
    }
}

/// Converts an HCL value to JSON (numbers stay numbers, null stays null).
pub fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::FileId;

    fn attr(key: &str, src: &str) -> RawAttr {
        RawAttr {
            key: key.into(),
            key_span: Span::new(FileId(0), 0, 0),
            expr: src.parse().unwrap(),
            span: Span::new(FileId(0), 0, src.len()),
        }
    }

    fn scope() -> Scope {
        let mut scope = Scope {
            source_type: "null".into(),
            source_name: "a".into(),
            build_name: "b".into(),
            ..Scope::default()
        };
        scope.var.insert("region".into(), Value::from("eu"));
        scope.local.insert("name".into(), Value::from("img"));
        scope
    }

    #[test]
    fn evaluates_references_and_templates() {
        let body = ConfigBody {
            attrs: vec![
                attr(
                    "a",
                    r#""${var.region}-${local.name}-${source.type}.${source.name}""#,
                ),
                attr("b", "build.Host"),
                attr("c", r#"[for s in ["x", "y"] : upper(s)]"#),
                attr("d", r#"var.region == "eu" ? 1 : 2"#),
            ],
            blocks: vec![],
            span: Span::new(FileId(0), 0, 0),
        };
        let config = body.evaluate(&scope(), None, "null").unwrap();
        let json = config.to_json();
        assert_eq!(json["a"], "eu-img-null.a");
        assert_eq!(json["b"], UNKNOWN);
        assert_eq!(json["c"], serde_json::json!(["X", "Y"]));
        assert_eq!(json["d"], 1);
        let mut rt = RuntimeVars::default();
        rt.values.insert("Host".into(), "10.0.0.1".into());
        let config = body.evaluate(&scope(), Some(&rt), "null").unwrap();
        assert_eq!(config.to_json()["b"], "10.0.0.1");
    }

    #[test]
    fn errors_name_the_reference() {
        let body = ConfigBody {
            attrs: vec![
                attr("a", "var.regoin"),
                attr("b", "uper(local.name)"),
                attr("c", "local.nme"),
            ],
            blocks: vec![],
            span: Span::new(FileId(0), 0, 0),
        };
        let diags = body.evaluate(&scope(), None, "null").unwrap_err();
        let msgs: Vec<_> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "reference to undeclared variable `var.regoin`",
                "call to unknown function `uper`",
                "reference to undefined local `local.nme`",
            ]
        );
        assert_eq!(
            diags.0[0].help.as_deref(),
            Some("did you mean `var.region`?")
        );
        assert_eq!(diags.0[1].help.as_deref(), Some("did you mean `upper`?"));
    }

    #[test]
    fn can_and_try_see_errors() {
        let body = ConfigBody {
            attrs: vec![
                attr("a", "can(var.nope)"),
                attr("b", "can(var.region)"),
                attr("c", r#"try(var.nope, local.nope, "fallback")"#),
                attr(
                    "d",
                    r#"[can(regex("^e", var.region)), try(upper(var.region), "x")]"#,
                ),
            ],
            blocks: vec![],
            span: Span::new(FileId(0), 0, 0),
        };
        let json = body.evaluate(&scope(), None, "null").unwrap().to_json();
        assert_eq!(json["a"], false);
        assert_eq!(json["b"], true);
        assert_eq!(json["c"], "fallback");
        assert_eq!(json["d"], serde_json::json!([true, "EU"]));
        let fails = ConfigBody {
            attrs: vec![attr("e", "try(var.nope)")],
            ..body
        };
        let diags = fails.evaluate(&scope(), None, "null").unwrap_err();
        assert_eq!(
            diags.0[0].message,
            "reference to undeclared variable `var.nope`"
        );
    }

    #[test]
    fn narrows_to_the_reference() {
        let text = r#""${var.a}-${var.ab}""#;
        let span = narrow(Span::new(FileId(0), 10, 10 + text.len()), text, "var.ab");
        assert_eq!((span.start, span.end), (10 + 12, 10 + 18));
    }
}
