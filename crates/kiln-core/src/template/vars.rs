//! Input variables: where each value comes from, in Packer's order of precedence (later wins):
//! defaults, `PKR_VAR_name` then `KILN_VAR_name` environment variables, `*.auto.pkrvars.*` files
//! in lexical order, then `-var-file` and `-var` in command-line order. Values are converted to
//! the declared type and checked by `validation` blocks.

use std::collections::BTreeMap;
use std::path::Path;

use hcl::eval::Evaluate;
use hcl::Value;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Span};
use crate::plan::{RawAttr, VariableInfo};

use super::eval::{base_context, Evaluator};
use super::model::{VarFile, Variable};
use super::types::Type;
use super::{funcs, LoadOptions, VarArg};

/// The resolved variables.
#[derive(Debug, Default)]
pub struct Resolved {
    pub values: BTreeMap<String, Value>,
    pub infos: Vec<VariableInfo>,
    /// String leaves of sensitive values, for redaction.
    pub sensitive: Vec<String>,
}

/// A value candidate for one variable.
enum Raw {
    Value(Value),
    /// An unparsed `-var` or environment value, interpreted by the variable's type.
    Text(String),
}

struct Candidate {
    raw: Raw,
    /// Where it came from, for messages and `kiln inspect`.
    origin: String,
    span: Option<Span>,
}

/// Resolves every declared variable from its sources.
pub fn resolve(
    variables: &[Variable],
    var_files: &[VarFile],
    opts: &LoadOptions,
    eval: &Evaluator<'_>,
    diags: &mut Diagnostics,
) -> Resolved {
    let mut chosen: BTreeMap<&str, Candidate> = BTreeMap::new();
    let declared = |name: &str| variables.iter().find(|v| v.name == name);

    for var in variables {
        if let Some(default) = &var.default {
            if let Some(value) = funcs::with_env(&opts.env, || eval_attr(eval, default, diags)) {
                chosen.insert(
                    &var.name,
                    Candidate {
                        raw: Raw::Value(value),
                        origin: "default".into(),
                        span: Some(default.span),
                    },
                );
            }
        }
    }
    for prefix in ["PKR_VAR_", "KILN_VAR_"] {
        for (key, value) in &opts.env {
            let Some(var) = key.strip_prefix(prefix).and_then(declared) else {
                continue;
            };
            chosen.insert(
                &var.name,
                Candidate {
                    raw: Raw::Text(value.clone()),
                    origin: format!("environment variable {key}"),
                    span: None,
                },
            );
        }
    }
    for file in var_files.iter().filter(|f| f.auto) {
        apply_file(file, variables, eval, &mut chosen, diags);
    }
    for arg in &opts.var_args {
        match arg {
            VarArg::File(path) => {
                if let Some(file) = var_files.iter().find(|f| !f.auto && f.path == *path) {
                    apply_file(file, variables, eval, &mut chosen, diags);
                }
            }
            VarArg::Var(name, value) => match declared(name) {
                Some(var) => {
                    chosen.insert(
                        &var.name,
                        Candidate {
                            raw: Raw::Text(value.clone()),
                            origin: "-var".into(),
                            span: None,
                        },
                    );
                }
                None => {
                    let mut d = Diagnostic::error(format!(
                        "`-var {name}=...` sets a variable that is not declared"
                    ));
                    d.help = did_you_mean(name, variables.iter().map(|v| v.name.as_str()))
                        .map(|s| format!("did you mean `{s}`?"));
                    diags.push(d);
                }
            },
        }
    }

    let mut out = Resolved::default();
    for var in variables {
        let Some(candidate) = chosen.remove(var.name.as_str()) else {
            diags.push(
                Diagnostic::error(format!("no value for required variable `{}`", var.name))
                    .at(var.span)
                    .with_label("has no default")
                    .with_help(format!(
                        "set it with `-var {0}=VALUE`, a `-var-file`, or the environment variable `PKR_VAR_{0}`",
                        var.name
                    )),
            );
            continue;
        };
        let Some(value) = typed(var, &candidate, diags) else {
            continue;
        };
        if !validate(var, &value, &candidate, eval, diags) {
            continue;
        }
        if var.sensitive {
            string_leaves(&value, &mut out.sensitive);
        }
        out.infos.push(VariableInfo {
            name: var.name.clone(),
            ty: var.ty.to_string(),
            description: var.description.clone(),
            sensitive: var.sensitive,
            value: (!var.sensitive).then(|| render_value(&value)),
            source: candidate.origin,
        });
        out.values.insert(var.name.clone(), value);
    }
    out
}

/// Applies the values of one var file; undeclared names are errors.
fn apply_file<'v>(
    file: &VarFile,
    variables: &'v [Variable],
    eval: &Evaluator<'_>,
    chosen: &mut BTreeMap<&'v str, Candidate>,
    diags: &mut Diagnostics,
) {
    for attr in &file.values {
        let Some(var) = variables.iter().find(|v| v.name == attr.key) else {
            let mut d = Diagnostic::error(format!(
                "variable `{}` is set in a var file but not declared",
                attr.key
            ))
            .at(attr.key_span)
            .with_label("undeclared variable");
            d.help = did_you_mean(&attr.key, variables.iter().map(|v| v.name.as_str()))
                .map(|s| format!("did you mean `{s}`?"));
            diags.push(d);
            continue;
        };
        if let Some(value) = eval_attr(eval, attr, diags) {
            chosen.insert(
                &var.name,
                Candidate {
                    raw: Raw::Value(value),
                    origin: format!("var file {}", file.path.display()),
                    span: Some(attr.span),
                },
            );
        }
    }
}

fn eval_attr(eval: &Evaluator<'_>, attr: &RawAttr, diags: &mut Diagnostics) -> Option<Value> {
    eval.attr(attr).map_err(|d| diags.push(d)).ok()
}

/// Converts a candidate to the variable's type.
fn typed(var: &Variable, c: &Candidate, diags: &mut Diagnostics) -> Option<Value> {
    // A sensitive value is never shown, not even the one that failed to convert: the message
    // leaves it out and the snippet line hides it.
    let secret: Vec<String> = match (&c.raw, var.sensitive) {
        (_, false) => Vec::new(),
        (Raw::Text(text), true) => vec![text.clone()],
        (Raw::Value(v), true) => {
            let mut leaves = Vec::new();
            string_leaves(v, &mut leaves);
            leaves
        }
    };
    let fail = |msg: String, diags: &mut Diagnostics| {
        let msg = if var.sensitive {
            "the sensitive value is not a valid ".to_string() + &var.ty.to_string()
        } else {
            msg
        };
        let mut d = Diagnostic::error(format!(
            "invalid value for variable `{}` (from {}): {msg}",
            var.name, c.origin
        ));
        d.secrets = secret.clone();
        diags.push(match c.span {
            Some(span) => d.at(span).with_label(format!("expected {}", var.ty)),
            None => d.at(var.span).with_label(format!("declared as {}", var.ty)),
        });
    };
    let value = match &c.raw {
        Raw::Value(v) => v.clone(),
        Raw::Text(text) if matches!(var.ty, Type::String | Type::Any) => {
            Value::String(text.clone())
        }
        Raw::Text(text) => {
            let parsed = text
                .parse::<hcl::Expression>()
                .map_err(|e| e.to_string())
                .and_then(|expr| {
                    expr.evaluate(&hcl::eval::Context::new())
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok(v) => v,
                Err(_) => {
                    fail(format!("`{text}` is not a valid {} value", var.ty), diags);
                    return None;
                }
            }
        }
    };
    if value.is_null() && !var.nullable {
        fail("the variable is not nullable".into(), diags);
        return None;
    }
    match var.ty.convert(value) {
        Ok(v) => Some(v),
        Err(e) => {
            fail(e, diags);
            None
        }
    }
}

/// Runs the variable's `validation` blocks; each failure is a diagnostic.
fn validate(
    var: &Variable,
    value: &Value,
    c: &Candidate,
    eval: &Evaluator<'_>,
    diags: &mut Diagnostics,
) -> bool {
    let mut ok = true;
    for v in &var.validations {
        let mut vars = BTreeMap::new();
        vars.insert(var.name.clone(), value.clone());
        let ctx = base_context(&vars, &BTreeMap::new(), Path::new(""), Path::new(""));
        let check = Evaluator {
            ctx,
            var_names: vec![var.name.clone()],
            local_names: Vec::new(),
            sources: eval.sources,
        };
        let passed = match check.attr(&v.condition) {
            Ok(Value::Bool(b)) => b,
            Ok(other) => {
                diags.push(
                    Diagnostic::error(format!(
                        "a validation condition must be a bool, got `{other}`"
                    ))
                    .at(v.condition.span),
                );
                false
            }
            Err(d) => {
                diags.push(d);
                false
            }
        };
        if passed {
            continue;
        }
        ok = false;
        let message = match check.attr(&v.error_message) {
            Ok(Value::String(s)) => s,
            _ => "the validation condition failed".into(),
        };
        let label = match c.span {
            Some(_) => "this condition failed".to_string(),
            None => format!("this condition failed for the value from {}", c.origin),
        };
        diags.push(
            Diagnostic::error(format!(
                "invalid value for variable `{}` (from {}): {message}",
                var.name, c.origin
            ))
            .at(v.condition.span)
            .with_label(label),
        );
    }
    ok
}

/// Every string leaf of `value` (numbers and bools too, as text), for redaction.
pub fn string_leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| string_leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| string_leaves(v, out)),
        _ => {}
    }
}

/// A value as one line of HCL, for `kiln inspect`.
pub fn render_value(value: &Value) -> String {
    use hcl::format::Format as _;
    let mut fmt = hcl::format::Formatter::builder().compact(true).build_vec();
    value
        .format_string(&mut fmt)
        .unwrap_or_else(|_| value.to_string())
}
