//! The build plan: one [`Build`] per (build block × selected source), fully resolved, plain data.
//!
//! Component configuration is kept as an unevaluated [`ConfigBody`] plus the [`Scope`] it is
//! evaluated in, because provisioners and post-processors may use `build.*` values that are only
//! known once the machine is up (`build.Host`, `build.Port`, ...). Builders' bodies are evaluated
//! when the plan is made; provisioners' bodies are trial-evaluated then (to report errors early)
//! and evaluated for real when they run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::diag::{Diagnostics, SourceMap, Span};

/// Everything `kiln build` will do, and the sources it came from.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub builds: Vec<Build>,
    /// Values of variables marked `sensitive` (every string leaf), for redaction.
    pub sensitive_values: Vec<String>,
    /// The files the plan was made from, for diagnostics.
    pub sources: Arc<SourceMap>,
    /// Declared variables with their resolved values.
    pub variables: Vec<VariableInfo>,
    /// The directory of the template (Packer's `path.root`).
    pub root: PathBuf,
}

/// One source under one build block.
#[derive(Debug, Clone)]
pub struct Build {
    /// `BUILD.TYPE.NAME` when the build block is named, else `TYPE.NAME`.
    pub name: String,
    /// The build block's `name`, if any.
    pub build_block: Option<String>,
    /// The source's type, e.g. `null`.
    pub source_type: String,
    /// The source's name (second label).
    pub source_name: String,
    /// The source block, with the build block's `source` overrides merged in.
    pub builder: ComponentSpec,
    pub provisioners: Vec<ProvisionerSpec>,
    pub error_cleanup_provisioner: Option<ProvisionerSpec>,
    /// Each inner list is one chain; a lone `post-processor` block is a chain of one.
    pub post_processors: Vec<Vec<PostProcessorSpec>>,
    /// Values the bodies are evaluated in.
    pub scope: Scope,
}

/// A builder, provisioner or post-processor block: its type and its body.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component type, e.g. `shell-local`.
    pub kind: String,
    /// The optional `name` attribute of provisioners and post-processors.
    pub name: Option<String>,
    pub body: ConfigBody,
    /// The whole block, for errors that concern it.
    pub span: Span,
}

/// A provisioner with its meta-arguments applied (`override` is already merged into `component`).
#[derive(Debug, Clone)]
pub struct ProvisionerSpec {
    pub component: ComponentSpec,
    /// Its place among the build block's provisioners, from 1, whichever sources it applies to
    /// (messages name it `provisioner N`).
    pub position: usize,
    pub pause_before: Option<Duration>,
    pub max_retries: u32,
    pub timeout: Option<Duration>,
}

/// A post-processor with its meta-arguments.
#[derive(Debug, Clone)]
pub struct PostProcessorSpec {
    pub component: ComponentSpec,
    /// `keep_input_artifact`; `None` when not set.
    pub keep_input_artifact: Option<bool>,
}

/// An unevaluated block body with spans, in the order written.
#[derive(Debug, Clone)]
pub struct ConfigBody {
    pub attrs: Vec<RawAttr>,
    pub blocks: Vec<RawBlock>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct RawAttr {
    pub key: String,
    pub key_span: Span,
    pub expr: hcl::Expression,
    /// The expression's span.
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct RawBlock {
    pub ident: String,
    pub ident_span: Span,
    pub labels: Vec<String>,
    /// One span per label.
    pub label_spans: Vec<Span>,
    pub body: ConfigBody,
    pub span: Span,
}

/// The values an expression can refer to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scope {
    /// `var.*`
    pub var: BTreeMap<String, hcl::Value>,
    /// `local.*`
    pub local: BTreeMap<String, hcl::Value>,
    /// `source.type` and `source.name`.
    pub source_type: String,
    pub source_name: String,
    /// `build.name` (the build block's name or empty) and `build.PackerRunUUID` / `build.ID` are
    /// filled from [`RuntimeVars`] at evaluation time.
    pub build_name: String,
    /// `path.root` and `path.cwd`.
    pub path_root: PathBuf,
    pub path_cwd: PathBuf,
}

/// `build.*` values known only at run time. Missing values evaluate to placeholders in trial
/// evaluation and to the empty string at run time (as Packer does).
#[derive(Debug, Clone, Default)]
pub struct RuntimeVars {
    pub values: BTreeMap<String, String>,
}

/// An evaluated body, ready for a component to decode.
#[derive(Debug, Clone)]
pub struct Config {
    pub kind: String,
    pub attrs: Vec<ConfigAttr>,
    pub blocks: Vec<ConfigBlock>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct ConfigAttr {
    pub key: String,
    pub value: serde_json::Value,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct ConfigBlock {
    pub ident: String,
    pub labels: Vec<String>,
    pub body: Config,
    pub span: Span,
}

/// Decoding of an evaluated [`Config`] into a component's typed options; errors point at the
/// attribute that caused them.
pub type DecodeResult<T> = Result<T, Diagnostics>;

/// A declared variable and its resolved value, for `kiln inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct VariableInfo {
    pub name: String,
    /// The type constraint as written, e.g. `string`, `list(string)`; `any` when absent.
    pub ty: String,
    pub description: Option<String>,
    pub sensitive: bool,
    /// The resolved value, rendered as HCL; `None` for sensitive variables.
    pub value: Option<String>,
    /// Where the value came from: `default`, `env PKR_VAR_x`, a var file path, `-var`.
    pub source: String,
}

impl Config {
    /// Decodes the evaluated attributes and blocks into `T` (nested blocks become lists of
    /// objects under the block's name). An error names the attribute and points at it.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> DecodeResult<T> {
        let value = self.to_json();
        serde_path_to_error::deserialize::<_, T>(value.clone()).map_err(|err| {
            let path = err.path().to_string();
            let first = err
                .path()
                .iter()
                .next()
                .map(|seg| seg.to_string())
                .filter(|seg| !seg.is_empty() && seg != ".")
                // `#[serde(flatten)]` loses the path: find the attribute whose absence changes
                // the error instead.
                .or_else(|| self.culprit::<T>(&value, &err.inner().to_string()));
            let span = first
                .as_deref()
                .and_then(|first| {
                    self.attrs
                        .iter()
                        .find(|a| a.key == first)
                        .map(|a| a.span)
                        .or_else(|| {
                            self.blocks
                                .iter()
                                .find(|b| b.ident == first)
                                .map(|b| b.span)
                        })
                })
                .unwrap_or(self.span);
            let msg = match first {
                Some(_) if !path.is_empty() && path != "." => {
                    format!("invalid value for `{path}`: {}", err.inner())
                }
                Some(key) => format!("invalid value for `{key}`: {}", err.inner()),
                None => format!("invalid `{}` configuration: {}", self.kind, err.inner()),
            };
            crate::diag::Diagnostic::error(msg).at(span).into()
        })
    }

    /// The first top-level key whose removal from `value` makes decoding give another error than
    /// `error`: the attribute (or block) to blame when serde could not say.
    fn culprit<T: serde::de::DeserializeOwned>(
        &self,
        value: &serde_json::Value,
        error: &str,
    ) -> Option<String> {
        let object = value.as_object()?;
        object.keys().find_map(|key| {
            let mut without = object.clone();
            without.remove(key);
            let changed = match serde_json::from_value::<T>(serde_json::Value::Object(without)) {
                Ok(_) => true,
                Err(e) => e.to_string() != error,
            };
            changed.then(|| key.clone())
        })
    }

    /// A configuration made from a JSON object rather than a template (tests, programmatic use).
    /// Attribute `i` (in order) gets the span `i+1..i+2` of file 0, the body `100..101`, so that
    /// tests can check which attribute an error points at.
    pub fn from_json(kind: &str, attrs: serde_json::Value) -> Config {
        let serde_json::Value::Object(map) = attrs else {
            panic!("Config::from_json needs a JSON object")
        };
        let span = |n: usize| Span::new(crate::diag::FileId(0), n, n + 1);
        Config {
            kind: kind.to_string(),
            attrs: map
                .into_iter()
                .enumerate()
                .map(|(i, (key, value))| ConfigAttr {
                    key,
                    value,
                    span: span(i + 1),
                })
                .collect(),
            blocks: Vec::new(),
            span: span(100),
        }
    }

    /// The configuration as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for a in &self.attrs {
            map.insert(a.key.clone(), a.value.clone());
        }
        for b in &self.blocks {
            let entry = map
                .entry(b.ident.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(items) = entry {
                items.push(b.body.to_json());
            }
        }
        serde_json::Value::Object(map)
    }

    /// Converts each attribute to the type its option declares, as Packer's HCL does
    /// (`ssh_port = "22"` or `ssh_port = var.port` with a string variable becomes the number 22;
    /// `headless = "true"` a bool; a number given for a string option its decimal text), so that
    /// components decode typed values. Attributes without a spec, `block`s and nulls are kept
    /// as they are; a value that cannot be converted is an error at its attribute.
    pub fn conform(&self, options: &[crate::component::OptionSpec]) -> DecodeResult<Config> {
        let mut diags = Diagnostics::new();
        let mut out = self.clone();
        for attr in &mut out.attrs {
            let Some(spec) = options.iter().find(|o| o.name == attr.key) else {
                continue;
            };
            if let Some(ty) = option_type(spec) {
                let help = format!("`{}` ({}): {}", spec.name, spec.ty, spec.doc);
                conform_attr(attr, &ty, help, &mut diags);
            }
        }
        // Nested blocks whose option lists their attributes (`block(object({...}))`).
        for block in &mut out.blocks {
            let spec = options.iter().find(|o| o.name == block.ident);
            let Some(fields) = spec.and_then(|s| s.block_attrs()) else {
                continue;
            };
            for attr in &mut block.body.attrs {
                if let Some((_, ty)) = fields.iter().find(|(name, _)| *name == attr.key) {
                    let help = format!("`{}` in a `{}` block is a {ty}", attr.key, block.ident);
                    conform_attr(attr, ty, help, &mut diags);
                }
            }
        }
        if diags.is_empty() {
            Ok(out)
        } else {
            Err(diags)
        }
    }

    /// The span of an attribute, or of the whole body when it is absent.
    pub fn span_of(&self, key: &str) -> Span {
        self.attrs
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.span)
            .unwrap_or(self.span)
    }
}

/// The type an option's values are converted to; `None` for blocks and for types HCL has no
/// name for (the component's decoder judges those).
fn option_type(spec: &crate::component::OptionSpec) -> Option<crate::template::types::Type> {
    use crate::template::types::Type;
    match spec.ty {
        _ if spec.is_block() => None,
        "duration" => Some(Type::String),
        written => written
            .parse::<hcl::Expression>()
            .ok()
            .and_then(|expr| Type::parse(&expr).ok()),
    }
}

/// Converts `attr`'s value to `ty`, or reports why it cannot be, with `help`.
fn conform_attr(
    attr: &mut ConfigAttr,
    ty: &crate::template::types::Type,
    help: String,
    diags: &mut Diagnostics,
) {
    let Ok(value) = serde_json::from_value::<hcl::Value>(attr.value.clone()) else {
        return;
    };
    match ty.convert(value) {
        Ok(value) => attr.value = crate::template::eval::to_json(&value),
        Err(e) => diags.push(
            crate::diag::Diagnostic::error(format!("invalid value for `{}`: {e}", attr.key))
                .at(attr.span)
                .with_help(help),
        ),
    }
}

/// Keeps the builds whose name matches a glob in `only` (all when empty) and none in `except`.
/// Globs match `TYPE.NAME` and `BUILD.TYPE.NAME` (e.g. `null.*`, `*.first`). An invalid glob is
/// an error, and so is an `only` glob that matches no build (its help names the builds).
pub fn select(
    builds: Vec<Build>,
    only: &[String],
    except: &[String],
) -> Result<Vec<Build>, crate::diag::Diagnostic> {
    let available = || {
        builds
            .iter()
            .map(|b| format!("`{}`", b.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let compile = |flag: &str, globs: &[String]| {
        globs
            .iter()
            .map(|g| {
                globset::GlobBuilder::new(g)
                    .literal_separator(false)
                    .build()
                    .map(|glob| (g.clone(), glob.compile_matcher()))
                    .map_err(|e| {
                        crate::diag::Diagnostic::error(format!("invalid `-{flag}` glob `{g}`: {e}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let only = compile("only", only)?;
    let except = compile("except", except)?;
    let matches = |m: &globset::GlobMatcher, b: &Build| {
        m.is_match(&b.name) || m.is_match(format!("{}.{}", b.source_type, b.source_name))
    };
    for (glob, m) in &only {
        if !builds.iter().any(|b| matches(m, b)) {
            return Err(
                crate::diag::Diagnostic::error(format!("`-only {glob}` matches no build"))
                    .with_help(format!("available builds: {}", available())),
            );
        }
    }
    Ok(builds
        .into_iter()
        .filter(|b| only.is_empty() || only.iter().any(|(_, m)| matches(m, b)))
        .filter(|b| !except.iter().any(|(_, m)| matches(m, b)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::OptionSpec;

    const fn opt(name: &'static str, ty: &'static str) -> OptionSpec {
        OptionSpec {
            name,
            ty,
            required: false,
            doc: "An option.",
        }
    }

    const OPTIONS: &[OptionSpec] = &[
        opt("port", "number"),
        opt("headless", "bool"),
        opt("name", "string"),
        opt("codes", "list(number)"),
        opt("labels", "map(string)"),
        opt("timeout", "duration"),
        opt("disk", "block"),
    ];

    #[test]
    fn conform_converts_values_to_their_option_types() {
        let config = Config::from_json(
            "x",
            serde_json::json!({
                "port": "22",
                "headless": "true",
                "name": 42,
                "codes": ["0", 2],
                "labels": {"a": 1, "b": true},
                "timeout": "5m",
                "unknown": "kept",
            }),
        );
        let out = config.conform(OPTIONS).expect("converts");
        assert_eq!(
            out.to_json(),
            serde_json::json!({
                "port": 22,
                "headless": true,
                "name": "42",
                "codes": [0, 2],
                "labels": {"a": "1", "b": "true"},
                "timeout": "5m",
                "unknown": "kept",
            })
        );
    }

    #[test]
    fn conform_reports_every_value_that_cannot_be_converted_at_its_attribute() {
        let config = Config::from_json(
            "x",
            serde_json::json!({"port": "twenty-two", "name": "ok", "headless": "maybe"}),
        );
        let diags = config.conform(OPTIONS).expect_err("two bad values");
        let spans: Vec<_> = diags.iter().map(|d| d.span.map(|s| s.start)).collect();
        // `from_json` gives attribute `i` the span starting at `i + 1`: port, name, headless.
        assert_eq!(spans, [Some(1), Some(3)]);
        let text: Vec<_> = diags.iter().map(|d| d.message.as_str()).collect();
        assert!(text[0].starts_with("invalid value for `port`"), "{text:?}");
        assert!(
            text[1].starts_with("invalid value for `headless`"),
            "{text:?}"
        );
        assert!(diags
            .iter()
            .all(|d| d.help.as_deref().is_some_and(|h| h.contains("An option."))));
    }
}
