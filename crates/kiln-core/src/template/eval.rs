//! Evaluation of expressions and bodies: the HCL context built from a [`Scope`], and the
//! conversion of HCL values into the JSON values components decode.

use hcl::eval::{Context, Evaluate};
use hcl::{Map, Value};

use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::{Config, ConfigAttr, ConfigBlock, ConfigBody, RuntimeVars, Scope};

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

/// The evaluation context for `scope`; `runtime = None` fills run-time values with placeholders.
pub fn context<'a>(scope: &Scope, runtime: Option<&RuntimeVars>) -> Context<'a> {
    let mut ctx = Context::new();
    ctx.declare_var(
        "var",
        object(scope.var.iter().map(|(k, v)| (k.clone(), v.clone()))),
    );
    ctx.declare_var(
        "local",
        object(scope.local.iter().map(|(k, v)| (k.clone(), v.clone()))),
    );
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
    ctx.declare_var(
        "path",
        object([
            (
                "root".to_string(),
                Value::from(scope.path_root.display().to_string()),
            ),
            (
                "cwd".to_string(),
                Value::from(scope.path_cwd.display().to_string()),
            ),
        ]),
    );
    ctx
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
        let ctx = context(scope, runtime);
        let mut diags = Diagnostics::new();
        let config = self.evaluate_in(&ctx, kind, &mut diags);
        if diags.has_errors() {
            Err(diags)
        } else {
            Ok(config)
        }
    }

    fn evaluate_in(&self, ctx: &Context, kind: &str, diags: &mut Diagnostics) -> Config {
        let mut attrs = Vec::new();
        for attr in &self.attrs {
            match attr.expr.evaluate(ctx) {
                Ok(value) => attrs.push(ConfigAttr {
                    key: attr.key.clone(),
                    value: to_json(&value),
                    span: attr.span,
                }),
                Err(err) => diags.push(
                    Diagnostic::error(format!("cannot evaluate `{}`: {}", attr.key, err))
                        .at(attr.span),
                ),
            }
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| ConfigBlock {
                ident: b.ident.clone(),
                labels: b.labels.clone(),
                body: b.body.evaluate_in(ctx, kind, diags),
                span: b.span,
            })
            .collect();
        Config {
            kind: kind.to_string(),
            attrs,
            blocks,
            span: self.span,
        }
    }
}

/// Converts an HCL value to JSON (numbers stay numbers, null stays null).
pub fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
