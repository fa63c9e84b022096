//! From a loaded template to a [`BuildPlan`]: variables, locals in dependency order, then one
//! [`Build`] per build block × source, with every component checked against the [`Registry`].
//! Every problem is reported; nothing stops at the first error.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hcl::Value;

use crate::component::{OptionSpec, Registry};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics, SourceMap, Span};
use crate::event::Redactor;
use crate::plan::{
    Build, BuildPlan, ComponentSpec, ConfigBody, PostProcessorSpec, ProvisionerSpec, RawAttr,
    RawBlock, Scope,
};

use super::eval::{base_context, context, narrow, Evaluator, UNAVAILABLE};
use super::model::{BuildBlock, Local, Model, Source, SourceRef};
use super::vars::{self, string_leaves};
use super::{LoadOptions, Loaded};

pub fn plan(
    loaded: &Loaded,
    opts: &LoadOptions,
    registry: &Registry,
) -> (Option<BuildPlan>, Diagnostics) {
    let mut diags = loaded.diagnostics.clone();
    if loaded.template.incomplete {
        return (None, diags);
    }
    let sources = loaded.sources.as_ref();
    let template = &loaded.template;
    let model = &template.model;
    let cwd = std::env::current_dir().unwrap_or_default();
    let root = template.root.clone();

    let empty = BTreeMap::new();
    let constants = Evaluator {
        ctx: base_context(&empty, &empty, &root, &cwd),
        var_names: Vec::new(),
        local_names: Vec::new(),
        sources: Some(sources),
    };
    let resolved = vars::resolve(
        &model.variables,
        &template.var_files,
        opts,
        &constants,
        &mut diags,
    );
    let mut sensitive = resolved.sensitive;
    let locals = resolve_locals(
        model,
        &resolved.values,
        &root,
        &cwd,
        sources,
        &mut sensitive,
        &mut diags,
    );

    let mut ctx = Resolver {
        model,
        registry,
        sources,
        diags: &mut diags,
        reported_types: BTreeSet::new(),
    };
    for source in &model.sources {
        if !registry.builders.contains_key(source.ty.as_str()) {
            ctx.unknown_type(
                "source type",
                &source.ty,
                source.type_span,
                registry.builders.keys().copied().collect(),
            );
        }
    }
    let base = Scope {
        var: resolved.values.clone(),
        local: locals.clone(),
        path_root: root.clone(),
        path_cwd: cwd.clone(),
        ..Scope::default()
    };
    ctx.check_unused_sources(&base);
    let mut builds = Vec::new();
    for block in &model.builds {
        for source_ref in &block.sources {
            let scope = Scope {
                var: resolved.values.clone(),
                local: locals.clone(),
                source_type: source_ref.ty.clone(),
                source_name: source_ref.rename.clone().unwrap_or(source_ref.name.clone()),
                build_name: block.name.clone().unwrap_or_default(),
                path_root: root.clone(),
                path_cwd: cwd.clone(),
            };
            if let Some(build) = ctx.build(block, source_ref, scope) {
                builds.push(build);
            }
        }
    }
    for (i, build) in builds.iter().enumerate() {
        if builds[..i].iter().any(|b| b.name == build.name) {
            diags.push(
                Diagnostic::error(format!("two builds are named `{}`", build.name))
                    .at(build.builder.span)
                    .with_help("give the build blocks distinct `name`s or rename the source with `name = ...`"),
            );
        }
    }
    // No diagnostic may show a sensitive value: not in its message, nor in its snippet.
    sensitive.sort();
    sensitive.dedup();
    let redactor = Redactor::new(sensitive.iter().cloned());
    let diags = Diagnostics(
        dedup(diags)
            .0
            .into_iter()
            .map(|d| d.redacted(&redactor, sources))
            .collect(),
    );
    if diags.has_errors() {
        return (None, diags);
    }
    let plan = BuildPlan {
        builds,
        sensitive_values: sensitive,
        sources: loaded.sources.clone(),
        variables: resolved.infos,
        root,
    };
    (Some(plan), diags)
}

/// Removes repeated diagnostics (a body shared by several builds is checked once per build), and
/// keeps one "cannot be used" error per reference to a value that failed earlier.
fn dedup(diags: Diagnostics) -> Diagnostics {
    let mut out = Diagnostics::new();
    for d in diags.0 {
        let repeated = out.0.iter().any(|o| {
            *o == d || (d.label.as_deref() == Some(UNAVAILABLE) && o.message == d.message)
        });
        if !repeated {
            out.push(d);
        }
    }
    out
}

/// The locals each local refers to, read from its source text.
fn references(local: &Local, sources: &SourceMap, names: &BTreeSet<&str>) -> Vec<String> {
    let text = sources.slice(local.expr.span);
    let mut out = Vec::new();
    for (i, _) in text.match_indices("local.") {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let rest = &text[i + "local.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if names.contains(name.as_str()) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Evaluates locals in dependency order; cycles are errors.
fn resolve_locals(
    model: &Model,
    var: &BTreeMap<String, Value>,
    root: &std::path::Path,
    cwd: &std::path::Path,
    sources: &SourceMap,
    sensitive: &mut Vec<String>,
    diags: &mut Diagnostics,
) -> BTreeMap<String, Value> {
    let names: BTreeSet<&str> = model.locals.iter().map(|l| l.name.as_str()).collect();
    let deps: BTreeMap<&str, Vec<String>> = model
        .locals
        .iter()
        .map(|l| (l.name.as_str(), references(l, sources, &names)))
        .collect();

    let mut sorter = LocalOrder {
        model,
        deps: &deps,
        state: BTreeMap::new(),
        stack: Vec::new(),
        order: Vec::new(),
        in_cycle: BTreeSet::new(),
        diags,
    };
    for local in &model.locals {
        sorter.visit(local);
    }
    let LocalOrder {
        order, in_cycle, ..
    } = sorter;

    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    for local in order {
        let blocked = in_cycle.contains(&local.name)
            || deps[local.name.as_str()]
                .iter()
                .any(|d| failed.contains(d.as_str()) || in_cycle.contains(d));
        if blocked {
            failed.insert(&local.name);
            continue;
        }
        let eval = Evaluator {
            ctx: base_context(var, &values, root, cwd),
            var_names: model.variables.iter().map(|v| v.name.clone()).collect(),
            local_names: names.iter().map(|n| n.to_string()).collect(),
            sources: Some(sources),
        };
        match eval.attr(&local.expr) {
            Ok(v) => {
                if local.sensitive {
                    string_leaves(&v, sensitive);
                }
                values.insert(local.name.clone(), v);
            }
            Err(d) => {
                diags.push(d);
                failed.insert(&local.name);
            }
        }
    }
    values
}

/// Depth-first ordering of locals; a local met again while on the stack closes a cycle.
struct LocalOrder<'m, 'd> {
    model: &'m Model,
    deps: &'d BTreeMap<&'m str, Vec<String>>,
    /// `false` while visiting, `true` when done.
    state: BTreeMap<&'m str, bool>,
    stack: Vec<&'m str>,
    order: Vec<&'m Local>,
    in_cycle: BTreeSet<String>,
    diags: &'d mut Diagnostics,
}

impl<'m> LocalOrder<'m, '_> {
    fn visit(&mut self, local: &'m Local) {
        match self.state.get(local.name.as_str()) {
            Some(true) => return,
            Some(false) => return self.cycle(local),
            None => {}
        }
        self.state.insert(&local.name, false);
        self.stack.push(&local.name);
        for dep in &self.deps[local.name.as_str()] {
            if let Some(d) = self.model.locals.iter().find(|l| l.name == *dep) {
                self.visit(d);
            }
        }
        self.stack.pop();
        self.state.insert(&local.name, true);
        self.order.push(local);
    }

    fn cycle(&mut self, local: &Local) {
        let start = self
            .stack
            .iter()
            .position(|n| *n == local.name)
            .unwrap_or(0);
        let mut cycle: Vec<&str> = self.stack[start..].to_vec();
        cycle.push(&local.name);
        if cycle.iter().all(|n| !self.in_cycle.contains(*n)) {
            let path: Vec<String> = cycle.iter().map(|n| format!("local.{n}")).collect();
            self.diags.push(
                Diagnostic::error(format!(
                    "local `{}` depends on itself: {}",
                    local.name,
                    path.join(" -> ")
                ))
                .at(local.span)
                .with_label("part of a cycle"),
            );
        }
        self.in_cycle.extend(cycle.iter().map(|n| n.to_string()));
    }
}

/// Parses a Go duration (`300ms`, `5s`, `1m30s`, `2h`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// The meta-arguments of provisioners and post-processors, which components never see.
const PROVISIONER_META: &[&str] = &[
    "name",
    "only",
    "except",
    "pause_before",
    "timeout",
    "max_retries",
    "override",
];
const POST_PROCESSOR_META: &[&str] = &["name", "only", "except", "keep_input_artifact"];

/// Which component family a block belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Family {
    Provisioner,
    PostProcessor,
}

struct Resolver<'a, 'd> {
    model: &'a Model,
    registry: &'a Registry,
    sources: &'a SourceMap,
    diags: &'d mut Diagnostics,
    /// Unknown types already reported (by span), so each is reported once.
    reported_types: BTreeSet<(u32, usize)>,
}

impl<'a> Resolver<'a, '_> {
    fn build(&mut self, block: &BuildBlock, source_ref: &SourceRef, scope: Scope) -> Option<Build> {
        let Some(source) = find_source(self.model, source_ref) else {
            let refs: Vec<String> = self
                .model
                .sources
                .iter()
                .map(|s| format!("{}.{}", s.ty, s.name))
                .collect();
            let wanted = format!("{}.{}", source_ref.ty, source_ref.name);
            let span = narrow(
                source_ref.span,
                self.sources.slice(source_ref.span),
                &format!("source.{wanted}"),
            );
            let mut d = Diagnostic::error(format!("build uses undefined source `source.{wanted}`"))
                .at(span)
                .with_label("no such source");
            d.help = did_you_mean(&wanted, refs.iter().map(String::as_str))
                .map(|s| format!("did you mean `source.{s}`?"))
                .or_else(|| {
                    Some(format!(
                        "define it with `source \"{}\" \"{}\" {{ ... }}`",
                        source_ref.ty, source_ref.name
                    ))
                });
            self.diags.push(d);
            return None;
        };
        let body = merge(&source.body, source_ref.overrides.as_ref());
        let eval = self.evaluator(&scope);
        self.check_builder(source, &body, &eval);

        let names = source_names(block);
        let this = this_source(source_ref);
        let mut provisioners = Vec::new();
        for (i, p) in block.provisioners.iter().enumerate() {
            if let Some(spec) = self.provisioner(p, i + 1, &eval, &names, &this) {
                provisioners.push(spec);
            }
        }
        let error_cleanup_provisioner = block
            .error_cleanup_provisioner
            .as_ref()
            .and_then(|p| self.provisioner(p, 1, &eval, &names, &this));
        let mut post_processors = Vec::new();
        for chain in &block.post_processors {
            let specs: Vec<PostProcessorSpec> = chain
                .iter()
                .filter_map(|p| self.post_processor(p, &eval, &names, &this))
                .collect();
            if !specs.is_empty() {
                post_processors.push(specs);
            }
        }
        let name = match &block.name {
            Some(b) => format!("{b}.{}.{}", scope.source_type, scope.source_name),
            None => format!("{}.{}", scope.source_type, scope.source_name),
        };
        Some(Build {
            name,
            build_block: block.name.clone(),
            source_type: scope.source_type.clone(),
            source_name: scope.source_name.clone(),
            builder: ComponentSpec {
                kind: source.ty.clone(),
                name: None,
                body,
                span: source.span,
            },
            provisioners,
            error_cleanup_provisioner,
            post_processors,
            scope,
        })
    }

    fn evaluator(&self, scope: &Scope) -> Evaluator<'a> {
        Evaluator {
            ctx: context(scope, None),
            var_names: self
                .model
                .variables
                .iter()
                .map(|v| v.name.clone())
                .collect(),
            local_names: self.model.locals.iter().map(|l| l.name.clone()).collect(),
            sources: Some(self.sources),
        }
    }

    /// Checks a source body's options, evaluates it and lets the builder decode it. Unknown
    /// source types are reported once, for all sources, by `plan`.
    fn check_builder(&mut self, source: &Source, body: &ConfigBody, eval: &Evaluator<'_>) {
        let Some(kind) = self.registry.builders.get(source.ty.as_str()) else {
            return;
        };
        let what = format!("source `{}.{}`", source.ty, source.name);
        if let Some(known) = check_options(body, &what, kind.options(), self.diags) {
            let mut diags = Diagnostics::new();
            let config = eval.body(&known, &source.ty, &mut diags);
            if diags.is_empty() {
                if let Err(e) = config
                    .conform(kind.options())
                    .and_then(|config| kind.configure(&config))
                {
                    diags.extend(e);
                }
            }
            self.diags.extend(diags);
        }
    }

    /// Checks the sources no build uses, so that `kiln validate` still reports their problems.
    fn check_unused_sources(&mut self, scope: &Scope) {
        let model = self.model;
        for source in &model.sources {
            let used = model.builds.iter().any(|b| {
                b.sources
                    .iter()
                    .any(|r| r.ty == source.ty && r.name == source.name)
            });
            if used {
                continue;
            }
            let scope = Scope {
                source_type: source.ty.clone(),
                source_name: source.name.clone(),
                ..scope.clone()
            };
            let eval = self.evaluator(&scope);
            self.check_builder(source, &source.body, &eval);
        }
    }

    fn unknown_type(&mut self, what: &str, ty: &str, span: Span, known: Vec<&str>) {
        if !self.reported_types.insert((span.file.0, span.start)) {
            return;
        }
        let mut d = Diagnostic::error(format!("unknown {what} `{ty}`"))
            .at(span)
            .with_label("not a known type");
        d.help = match did_you_mean(ty, known.iter().copied()) {
            Some(s) => Some(format!("did you mean `{s}`?")),
            None => Some(format!("known types: {}", known.join(", "))),
        };
        self.diags.push(d);
    }

    /// Evaluates a meta-argument, reporting failures.
    fn meta(&mut self, eval: &Evaluator<'_>, attr: &RawAttr) -> Option<Value> {
        eval.attr(attr).map_err(|d| self.diags.push(d)).ok()
    }

    /// Reads `only`/`except`, checking that each name is a source of the build block.
    fn filter(
        &mut self,
        eval: &Evaluator<'_>,
        attr: Option<&RawAttr>,
        names: &[String],
    ) -> Option<Vec<String>> {
        let attr = attr?;
        let value = self.meta(eval, attr)?;
        let Some(items) = value.as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        }) else {
            self.diags.push(
                Diagnostic::error(format!("`{}` must be a list of source names", attr.key))
                    .at(attr.span),
            );
            return None;
        };
        for item in &items {
            if !names.contains(item) {
                let mut d = Diagnostic::error(format!(
                    "`{}` names `{item}`, which is not a source of this build",
                    attr.key
                ))
                .at(narrow(attr.span, self.sources.slice(attr.span), item))
                .with_label("unknown source");
                d.help = did_you_mean(item, names.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| {
                        Some(format!(
                            "sources of this build: {}",
                            names
                                .iter()
                                .filter(|n| n.contains('.') && !n.starts_with("source."))
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    });
                self.diags.push(d);
            }
        }
        Some(items)
    }

    fn duration(&mut self, eval: &Evaluator<'_>, attr: Option<&RawAttr>) -> Option<Duration> {
        let attr = attr?;
        let value = self.meta(eval, attr)?;
        let parsed = value.as_str().and_then(parse_duration);
        if parsed.is_none() {
            self.diags.push(
                Diagnostic::error(format!("invalid duration {value} for `{}`", attr.key))
                    .at(attr.span)
                    .with_label("not a duration")
                    .with_help("write a duration such as \"30s\", \"5m\" or \"1h30m\""),
            );
        }
        parsed
    }

    /// Splits a component block into its meta-arguments and the body the component sees, checks
    /// the type and options, and trial-evaluates and configures the body. `None` when the block
    /// does not apply to this source (`only`/`except`).
    fn component(
        &mut self,
        family: Family,
        block: &RawBlock,
        eval: &Evaluator<'_>,
        names: &[String],
        this: &[String],
    ) -> Option<(ComponentSpec, BTreeMap<String, RawAttr>)> {
        let ty = block.labels[0].clone();
        let meta_names = match family {
            Family::Provisioner => PROVISIONER_META,
            Family::PostProcessor => POST_PROCESSOR_META,
        };
        let mut body = block.body.clone();
        let mut meta: BTreeMap<String, RawAttr> = BTreeMap::new();
        body.attrs.retain(|a| {
            if meta_names.contains(&a.key.as_str()) {
                meta.insert(a.key.clone(), a.clone());
                false
            } else {
                true
            }
        });
        let only = self.filter(eval, meta.get("only"), names);
        let except = self.filter(eval, meta.get("except"), names);
        if let Some(ov) = meta.get("override") {
            if let Some(extra) = self.overrides(eval, ov, names, this) {
                for attr in extra {
                    body.attrs.retain(|a| a.key != attr.key);
                    body.attrs.push(attr);
                }
            }
        }
        let name = meta.get("name").and_then(|a| match self.meta(eval, a) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        });

        let options = match family {
            Family::Provisioner => self
                .registry
                .provisioners
                .get(ty.as_str())
                .map(|k| k.options()),
            Family::PostProcessor => self
                .registry
                .post_processors
                .get(ty.as_str())
                .map(|k| k.options()),
        };
        let (what, known): (&str, Vec<&str>) = match family {
            Family::Provisioner => (
                "provisioner type",
                self.registry.provisioners.keys().copied().collect(),
            ),
            Family::PostProcessor => (
                "post-processor type",
                self.registry.post_processors.keys().copied().collect(),
            ),
        };
        match options {
            Some(options) => {
                let label = match family {
                    Family::Provisioner => format!("provisioner `{ty}`"),
                    Family::PostProcessor => format!("post-processor `{ty}`"),
                };
                let known = check_options(&body, &label, options, self.diags);
                let mut diags = Diagnostics::new();
                let config = eval.body(known.as_ref().unwrap_or(&body), &ty, &mut diags);
                if known.is_some() && diags.is_empty() {
                    let configured = config.conform(options).and_then(|config| match family {
                        Family::Provisioner => self.registry.provisioners[ty.as_str()]
                            .configure(&config)
                            .map(drop),
                        Family::PostProcessor => self.registry.post_processors[ty.as_str()]
                            .configure(&config)
                            .map(drop),
                    });
                    if let Err(e) = configured {
                        diags.extend(e);
                    }
                }
                self.diags.extend(diags);
            }
            None => self.unknown_type(what, &ty, block.label_spans[0], known),
        }

        let selected = only.is_none_or(|o| o.iter().any(|n| this.contains(n)))
            && !except.is_some_and(|e| e.iter().any(|n| this.contains(n)));
        selected.then_some((
            ComponentSpec {
                kind: ty,
                name,
                body,
                span: block.span,
            },
            meta,
        ))
    }

    /// Reads `override = { "TYPE.NAME" = { key = value } }` and returns this source's attributes.
    fn overrides(
        &mut self,
        eval: &Evaluator<'_>,
        attr: &RawAttr,
        names: &[String],
        this: &[String],
    ) -> Option<Vec<RawAttr>> {
        let value = self.meta(eval, attr)?;
        let Some(map) = value.as_object() else {
            self.diags.push(
                Diagnostic::error("`override` must be a map from source name to attributes")
                    .at(attr.span),
            );
            return None;
        };
        let mut out = Vec::new();
        for (key, attrs) in map {
            if !names.contains(key) {
                let mut d = Diagnostic::error(format!(
                    "`override` names `{key}`, which is not a source of this build"
                ))
                .at(narrow(attr.span, self.sources.slice(attr.span), key))
                .with_label("unknown source");
                d.help = did_you_mean(key, names.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"));
                self.diags.push(d);
                continue;
            }
            let Some(attrs) = attrs.as_object() else {
                self.diags.push(
                    Diagnostic::error(format!("`override.{key}` must be an object of attributes"))
                        .at(attr.span),
                );
                continue;
            };
            if this.contains(key) {
                out.extend(attrs.iter().map(|(k, v)| RawAttr {
                    key: k.clone(),
                    key_span: attr.key_span,
                    expr: hcl::Expression::from(v.clone()),
                    span: attr.span,
                }));
            }
        }
        Some(out)
    }

    fn provisioner(
        &mut self,
        block: &RawBlock,
        position: usize,
        eval: &Evaluator<'_>,
        names: &[String],
        this: &[String],
    ) -> Option<ProvisionerSpec> {
        let (component, meta) = self.component(Family::Provisioner, block, eval, names, this)?;
        let pause_before = self.duration(eval, meta.get("pause_before"));
        let timeout = self.duration(eval, meta.get("timeout"));
        let max_retries = match meta.get("max_retries") {
            Some(attr) => match self.meta(eval, attr) {
                Some(v) => match v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                {
                    Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
                    None => {
                        self.diags.push(
                            Diagnostic::error(format!(
                                "`max_retries` must be a whole number, got {v}"
                            ))
                            .at(attr.span),
                        );
                        0
                    }
                },
                None => 0,
            },
            None => 0,
        };
        Some(ProvisionerSpec {
            component,
            position,
            pause_before,
            max_retries,
            timeout,
        })
    }

    fn post_processor(
        &mut self,
        block: &RawBlock,
        eval: &Evaluator<'_>,
        names: &[String],
        this: &[String],
    ) -> Option<PostProcessorSpec> {
        let (component, meta) = self.component(Family::PostProcessor, block, eval, names, this)?;
        let keep_input_artifact = match meta.get("keep_input_artifact") {
            Some(attr) => match self.meta(eval, attr) {
                Some(Value::Bool(b)) => Some(b),
                Some(other) => {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "`keep_input_artifact` must be a bool, got {other}"
                        ))
                        .at(attr.span),
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        Some(PostProcessorSpec {
            component,
            keep_input_artifact,
        })
    }
}

fn find_source<'m>(model: &'m Model, r: &SourceRef) -> Option<&'m Source> {
    model
        .sources
        .iter()
        .find(|s| s.ty == r.ty && s.name == r.name)
}

/// Every way `only`, `except` and `override` may name a source of `block`.
fn source_names(block: &BuildBlock) -> Vec<String> {
    block.sources.iter().flat_map(this_source).collect()
}

/// The names of one source: `TYPE.NAME`, `NAME` and `source.TYPE.NAME`, also with its new name
/// when the build renames it.
fn this_source(r: &SourceRef) -> Vec<String> {
    let mut names = vec![r.name.clone()];
    names.extend(r.rename.clone());
    names
        .into_iter()
        .flat_map(|n| {
            [
                format!("{}.{n}", r.ty),
                n.clone(),
                format!("source.{}.{n}", r.ty),
            ]
        })
        .collect()
}

/// The source body with a build's `source` block merged in: attributes replace attributes, and
/// blocks replace all blocks of the same type.
fn merge(base: &ConfigBody, overrides: Option<&ConfigBody>) -> ConfigBody {
    let Some(ov) = overrides else {
        return base.clone();
    };
    let mut out = base.clone();
    for attr in &ov.attrs {
        out.attrs.retain(|a| a.key != attr.key);
        out.attrs.push(attr.clone());
    }
    let replaced: BTreeSet<&str> = ov.blocks.iter().map(|b| b.ident.as_str()).collect();
    out.blocks.retain(|b| !replaced.contains(b.ident.as_str()));
    out.blocks.extend(ov.blocks.iter().cloned());
    out
}

/// Reports attributes and blocks that the component does not have, and missing required ones.
/// Returns the body without the unknown ones, so the component can still check the rest, or
/// `None` when a required option is missing (the component would only repeat that).
fn check_options(
    body: &ConfigBody,
    what: &str,
    options: &[OptionSpec],
    diags: &mut Diagnostics,
) -> Option<ConfigBody> {
    let blocks: Vec<&str> = options
        .iter()
        .filter(|o| o.is_block())
        .map(|o| o.name)
        .collect();
    // A block's name is accepted as an attribute too: JSON templates write blocks as objects.
    let attrs: Vec<&str> = options.iter().map(|o| o.name).collect();
    super::model::check_body(body, what, &attrs, &blocks, diags);
    // The attributes of nested blocks whose option lists them.
    let mut nested = BTreeMap::new();
    for opt in options {
        if let Some(fields) = opt.block_attrs() {
            let names: Vec<String> = fields.into_iter().map(|(name, _)| name).collect();
            nested.insert(opt.name, names);
        }
    }
    for block in &body.blocks {
        if let Some(names) = nested.get(block.ident.as_str()) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let inner = format!("a `{}` block of {what}", block.ident);
            super::model::check_body(&block.body, &inner, &names, &[], diags);
        }
    }
    let mut complete = true;
    for opt in options.iter().filter(|o| o.required) {
        let present = body.attrs.iter().any(|a| a.key == opt.name)
            || body.blocks.iter().any(|b| b.ident == opt.name);
        if !present {
            complete = false;
            diags.push(
                Diagnostic::error(format!(
                    "{what} is missing the required option `{}`",
                    opt.name
                ))
                .at(body.span)
                .with_help(format!("`{}` ({}): {}", opt.name, opt.ty, opt.doc)),
            );
        }
    }
    let mut known = body.clone();
    known.attrs.retain(|a| attrs.contains(&a.key.as_str()));
    known.blocks.retain(|b| blocks.contains(&b.ident.as_str()));
    for block in &mut known.blocks {
        if let Some(names) = nested.get(block.ident.as_str()) {
            block.body.attrs.retain(|a| names.contains(&a.key));
            block.body.blocks.clear();
        }
    }
    complete.then_some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("five seconds"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn merges_overrides() {
        let attr = |k: &str, v: &str| RawAttr {
            key: k.into(),
            key_span: Span::new(crate::diag::FileId(0), 0, 0),
            expr: hcl::Expression::from(v),
            span: Span::new(crate::diag::FileId(0), 0, 0),
        };
        let body = |attrs| ConfigBody {
            attrs,
            blocks: vec![],
            span: Span::new(crate::diag::FileId(0), 0, 0),
        };
        let merged = merge(
            &body(vec![attr("a", "1"), attr("b", "2")]),
            Some(&body(vec![attr("b", "3")])),
        );
        let pairs: Vec<_> = merged
            .attrs
            .iter()
            .map(|a| (a.key.as_str(), a.expr.to_string()))
            .collect();
        assert_eq!(
            pairs,
            [("a", "\"1\"".to_string()), ("b", "\"3\"".to_string())]
        );
    }
}
