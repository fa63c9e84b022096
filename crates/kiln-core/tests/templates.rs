//! Data-driven template tests: every file under `tests/fixtures/valid` must plan cleanly (its
//! plan summary is snapshotted); every file under `tests/fixtures/invalid` must fail (its rendered
//! diagnostics are snapshotted). A fixture may have a sidecar `NAME.args` file with one input per
//! line: `-var NAME=VALUE`, `-var-file PATH` (relative to `tests/fixtures`) or `env NAME=VALUE`.
//! Also: variable precedence, build selection and a few API-level checks.

#![allow(clippy::result_large_err)] // `Diagnostic` errors, as in the crate itself

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::artifact::Artifact;
use kiln_core::component::{
    Builder, BuilderKind, OptionSpec, PostProcessed, PostProcessor, PostProcessorKind,
    ProvisionCtx, ProvisionHook, Provisioner, ProvisionerKind, Registry,
};
use kiln_core::diag::{self, Diagnostic, Diagnostics};
use kiln_core::plan::{self, BuildPlan, Config};
use kiln_core::runner::{BuildCtx, BuildError};
use kiln_core::template::{self, LoadOptions, VarArg};
use serde::Deserialize;

// ---- A small registry of test component kinds (fixture data) ----

const NULL_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "communicator",
        ty: "string",
        required: false,
        doc: "How to connect.",
    },
    OptionSpec {
        name: "ssh_host",
        ty: "string",
        required: false,
        doc: "Host to connect to.",
    },
    OptionSpec {
        name: "ssh_username",
        ty: "string",
        required: false,
        doc: "User to connect as.",
    },
    OptionSpec {
        name: "ssh_password",
        ty: "string",
        required: false,
        doc: "Password.",
    },
    OptionSpec {
        name: "tags",
        ty: "map(string)",
        required: false,
        doc: "Tags.",
    },
    OptionSpec {
        name: "disk",
        ty: "block",
        required: false,
        doc: "A disk.",
    },
    OptionSpec {
        name: "volume",
        ty: "block(object({size = number, label = string}))",
        required: false,
        doc: "A volume, whose attributes the validator checks.",
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // decoded to check the types; the test builder never runs
struct NullConfig {
    communicator: Option<String>,
    ssh_host: Option<String>,
    ssh_username: Option<String>,
    ssh_password: Option<String>,
    tags: Option<std::collections::BTreeMap<String, String>>,
    disk: Option<Vec<DiskConfig>>,
    volume: Option<Vec<VolumeConfig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VolumeConfig {
    size: u64,
    label: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct DiskConfig {
    size: u64,
}

struct NullKind;

struct Never;

#[async_trait]
impl Builder for Never {
    async fn run(&self, _: &BuildCtx, _: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        Err(BuildError::Step {
            step: "test".into(),
            source: "test components do not run".into(),
        })
    }
}

#[async_trait]
impl Provisioner for Never {
    async fn provision(&self, _: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        Err("test components do not run".into())
    }
}

#[async_trait]
impl PostProcessor for Never {
    async fn process(
        &self,
        _: &BuildCtx,
        _: Artifact,
    ) -> Result<PostProcessed, kiln_core::BoxError> {
        Err("test components do not run".into())
    }
}

impl BuilderKind for NullKind {
    fn type_name(&self) -> &'static str {
        "null"
    }
    fn options(&self) -> &'static [OptionSpec] {
        NULL_OPTIONS
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics> {
        let c: NullConfig = config.decode()?;
        if let Some(comm) = &c.communicator {
            if !["none", "ssh"].contains(&comm.as_str()) {
                return Err(Diagnostic::error(format!("unknown communicator `{comm}`"))
                    .at(config.span_of("communicator"))
                    .with_help("use `none` or `ssh`")
                    .into());
            }
        }
        Ok(Box::new(Never))
    }
}

struct DockerKind;

impl BuilderKind for DockerKind {
    fn type_name(&self) -> &'static str {
        "docker"
    }
    fn options(&self) -> &'static [OptionSpec] {
        &[OptionSpec {
            name: "image",
            ty: "string",
            required: true,
            doc: "Base image.",
        }]
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn Builder>, Diagnostics> {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct DockerConfig {
            image: String,
        }
        let _: DockerConfig = config.decode()?;
        Ok(Box::new(Never))
    }
}

const SHELL_LOCAL_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "inline",
        ty: "list(string)",
        required: false,
        doc: "Commands.",
    },
    OptionSpec {
        name: "command",
        ty: "string",
        required: false,
        doc: "One command.",
    },
    OptionSpec {
        name: "environment_vars",
        ty: "list(string)",
        required: false,
        doc: "Env.",
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ShellLocalConfig {
    inline: Option<Vec<String>>,
    command: Option<String>,
    environment_vars: Option<Vec<String>>,
}

struct ShellLocalKind;

fn shell_local(config: &Config) -> Result<(), Diagnostics> {
    let c: ShellLocalConfig = config.decode()?;
    if c.inline.is_none() && c.command.is_none() {
        return Err(
            Diagnostic::error("`shell-local` needs `inline` or `command`")
                .at(config.span)
                .into(),
        );
    }
    Ok(())
}

impl ProvisionerKind for ShellLocalKind {
    fn type_name(&self) -> &'static str {
        "shell-local"
    }
    fn options(&self) -> &'static [OptionSpec] {
        SHELL_LOCAL_OPTIONS
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        shell_local(config).map(|()| Box::new(Never) as Box<dyn Provisioner>)
    }
}

impl PostProcessorKind for ShellLocalKind {
    fn type_name(&self) -> &'static str {
        "shell-local"
    }
    fn options(&self) -> &'static [OptionSpec] {
        SHELL_LOCAL_OPTIONS
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        shell_local(config).map(|()| Box::new(Never) as Box<dyn PostProcessor>)
    }
}

struct ManifestKind;

impl PostProcessorKind for ManifestKind {
    fn type_name(&self) -> &'static str {
        "manifest"
    }
    fn options(&self) -> &'static [OptionSpec] {
        &[OptionSpec {
            name: "output",
            ty: "string",
            required: false,
            doc: "Output file.",
        }]
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct ManifestConfig {
            output: Option<String>,
        }
        let _: ManifestConfig = config.decode()?;
        Ok(Box::new(Never))
    }
}

fn registry() -> Registry {
    let mut r = Registry::default();
    r.add_builder(Arc::new(NullKind));
    r.add_builder(Arc::new(DockerKind));
    r.add_provisioner(Arc::new(ShellLocalKind));
    r.add_post_processor(Arc::new(ShellLocalKind));
    r.add_post_processor(Arc::new(ManifestKind));
    r
}

// ---- Fixture plumbing ----

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The load options for a fixture: its path relative to the crate (stable in snapshots) and the
/// inputs from its `.args` sidecar.
fn options_for(path: &Path) -> LoadOptions {
    let rel = path.strip_prefix(crate_dir()).unwrap_or(path).to_path_buf();
    let mut opts = LoadOptions {
        path: rel,
        ..LoadOptions::default()
    };
    let sidecar = PathBuf::from(format!("{}.args", path.display()));
    if let Ok(text) = std::fs::read_to_string(&sidecar) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (kind, rest) = line.split_once(' ').expect("`KIND VALUE` in an .args file");
            match kind {
                "-var" => {
                    let (k, v) = rest.split_once('=').expect("-var NAME=VALUE");
                    opts.var_args.push(VarArg::Var(k.into(), v.into()));
                }
                "-var-file" => opts
                    .var_args
                    .push(VarArg::File(PathBuf::from("tests/fixtures").join(rest))),
                "env" => {
                    let (k, v) = rest.split_once('=').expect("env NAME=VALUE");
                    opts.env.push((k.into(), v.into()));
                }
                other => panic!("unknown sidecar input `{other}`"),
            }
        }
    }
    opts
}

fn is_fixture(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    !name.ends_with(".args")
}

/// Runs load + plan from the crate directory, so that relative paths in fixtures work.
fn run(path: &Path) -> (Option<BuildPlan>, Diagnostics, Arc<diag::SourceMap>) {
    std::env::set_current_dir(crate_dir()).unwrap();
    let opts = options_for(path);
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry());
    (plan, diags, loaded.sources)
}

/// A stable, readable summary of a plan.
fn summary(plan: &BuildPlan, diags: &Diagnostics) -> String {
    let mut out = String::new();
    if !diags.is_empty() {
        out.push_str("diagnostics:\n");
        out.push_str(&diag::render(&plan.sources, diags, false));
    }
    out.push_str("variables:\n");
    for v in &plan.variables {
        let value = v.value.as_deref().unwrap_or("<sensitive>");
        let _ = writeln!(out, "  {}: {} = {} ({})", v.name, v.ty, value, v.source);
    }
    let _ = writeln!(out, "sensitive values: {:?}", plan.sensitive_values);
    for b in &plan.builds {
        let _ = writeln!(out, "build {} (block {:?})", b.name, b.build_block);
        let cfg = b
            .builder
            .body
            .evaluate(&b.scope, None, &b.builder.kind)
            .unwrap();
        let _ = writeln!(out, "  source {}: {}", b.builder.kind, cfg.to_json());
        let _ = writeln!(
            out,
            "  locals: {}",
            serde_json::to_string(&b.scope.local).unwrap()
        );
        for p in &b.provisioners {
            let c = &p.component;
            let cfg = c.body.evaluate(&b.scope, None, &c.kind).unwrap();
            let _ = writeln!(
                out,
                "  provisioner {} name={:?} pause_before={:?} timeout={:?} max_retries={}: {}",
                c.kind,
                c.name,
                p.pause_before,
                p.timeout,
                p.max_retries,
                cfg.to_json()
            );
        }
        if let Some(p) = &b.error_cleanup_provisioner {
            let cfg = p
                .component
                .body
                .evaluate(&b.scope, None, &p.component.kind)
                .unwrap();
            let _ = writeln!(
                out,
                "  error-cleanup-provisioner {}: {}",
                p.component.kind,
                cfg.to_json()
            );
        }
        for (i, chain) in b.post_processors.iter().enumerate() {
            for p in chain {
                let c = &p.component;
                let cfg = c.body.evaluate(&b.scope, None, &c.kind).unwrap();
                let _ = writeln!(
                    out,
                    "  chain {i}: post-processor {} keep_input_artifact={:?}: {}",
                    c.kind,
                    p.keep_input_artifact,
                    cfg.to_json()
                );
            }
        }
    }
    out
}

#[test]
fn valid_templates() {
    insta::glob!("fixtures/valid/*", |path| {
        if !is_fixture(path) {
            return;
        }
        let (plan, diags, sources) = run(path);
        let Some(plan) = plan else {
            panic!(
                "{} should plan cleanly:\n{}",
                path.display(),
                diag::render(&sources, &diags, false)
            );
        };
        insta::assert_snapshot!(summary(&plan, &diags));
    });
}

#[test]
fn invalid_templates() {
    insta::glob!("fixtures/invalid/*", |path| {
        if !is_fixture(path) {
            return;
        }
        let (plan, diags, sources) = run(path);
        assert!(plan.is_none(), "{} should not plan", path.display());
        assert!(diags.has_errors());
        for d in diags.iter() {
            // Only problems with command-line inputs have no place in a file.
            assert!(
                d.span.is_some() || d.message.starts_with("`-var "),
                "{}: diagnostic without a location: {}",
                path.display(),
                d.message
            );
        }
        insta::assert_snapshot!(diag::render(&sources, &diags, false));
    });
}

// ---- Variable precedence: each level overrides the previous one ----

/// A template directory whose variable `v` (and `w`, set only by the default) can be set at
/// every level; returns `(value, source)` of `v` for the given inputs.
fn resolve_v(dir: &Path, env: &[(&str, &str)], var_args: Vec<VarArg>) -> (String, String) {
    let opts = LoadOptions {
        path: dir.to_path_buf(),
        var_args,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry());
    let plan = plan.unwrap_or_else(|| panic!("{}", diag::render(&loaded.sources, &diags, false)));
    let v = plan.variables.iter().find(|v| v.name == "v").unwrap();
    (v.value.clone().unwrap(), v.source.clone())
}

fn precedence_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "main.pkr.hcl",
        "variable \"v\" {\n  default = \"default\"\n}\nsource \"null\" \"a\" {\n  communicator = \"none\"\n}\n",
    );
    write(
        "build.pkr.hcl",
        "build {\n  sources = [\"source.null.a\"]\n}\n",
    );
    dir
}

#[test]
fn variable_precedence_levels() {
    let dir = precedence_dir();
    let d = dir.path();
    let file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    assert_eq!(
        resolve_v(d, &[], vec![]),
        ("\"default\"".into(), "default".into())
    );

    let pkr = [("PKR_VAR_v", "pkr")];
    assert_eq!(resolve_v(d, &pkr, vec![]).0, "\"pkr\"");
    let both = [("KILN_VAR_v", "kiln"), ("PKR_VAR_v", "pkr")];
    assert_eq!(
        resolve_v(d, &both, vec![]),
        ("\"kiln\"".into(), "environment variable KILN_VAR_v".into())
    );

    // Automatic var files beat the environment; the lexically last one wins.
    file("b.auto.pkrvars.hcl", "v = \"auto-b\"\n");
    file("a.auto.pkrvars.hcl", "v = \"auto-a\"\n");
    let (value, source) = resolve_v(d, &both, vec![]);
    assert_eq!(value, "\"auto-b\"");
    assert!(source.ends_with("b.auto.pkrvars.hcl"), "{source}");

    // -var-file and -var beat automatic files, in command-line order (later wins).
    let f1 = file("one.pkrvars.hcl", "v = \"file-1\"\n");
    let f2 = file("two.pkrvars.json", "{\"v\": \"file-2\"}\n");
    let var = |s: &str| VarArg::Var("v".into(), s.into());
    assert_eq!(
        resolve_v(d, &both, vec![VarArg::File(f1.clone())]).0,
        "\"file-1\""
    );
    assert_eq!(
        resolve_v(d, &both, vec![VarArg::File(f1.clone()), var("cli")]),
        ("\"cli\"".into(), "-var".into())
    );
    assert_eq!(
        resolve_v(d, &both, vec![var("cli"), VarArg::File(f1.clone())]).0,
        "\"file-1\""
    );
    assert_eq!(
        resolve_v(
            d,
            &both,
            vec![VarArg::File(f1), var("cli"), VarArg::File(f2)]
        )
        .0,
        "\"file-2\""
    );
    assert_eq!(
        resolve_v(d, &both, vec![var("first"), var("second")]).0,
        "\"second\""
    );
}

#[test]
fn directory_merges_files_and_reports_each_file() {
    let dir = precedence_dir();
    std::fs::write(dir.path().join("bad.pkr.hcl"), "locals {\n  x = \n}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a template").unwrap();
    let opts = LoadOptions {
        path: dir.path().to_path_buf(),
        ..LoadOptions::default()
    };
    let loaded = template::load(&opts);
    let rendered = diag::render(&loaded.sources, &loaded.diagnostics, false);
    assert!(rendered.contains("bad.pkr.hcl:2:"), "{rendered}");
    // The other files were still read: the source and build are known.
    assert_eq!(loaded.template.model.sources.len(), 1);
    assert_eq!(loaded.template.model.builds.len(), 1);
    let (plan, diags) = template::plan(&loaded, &opts, &registry());
    assert!(plan.is_none());
    assert_eq!(
        diags
            .iter()
            .filter(|d| d.message.starts_with("syntax error"))
            .count(),
        1
    );
}

#[test]
fn missing_path_is_an_error() {
    let opts = LoadOptions {
        path: PathBuf::from("/nonexistent/kiln/template.pkr.hcl"),
        ..LoadOptions::default()
    };
    let loaded = template::load(&opts);
    assert!(loaded.diagnostics.has_errors());
    assert!(loaded.diagnostics.0[0].message.contains("cannot read"));
}

// ---- Build selection ----

fn two_builds() -> Vec<kiln_core::plan::Build> {
    let path = crate_dir().join("tests/fixtures/valid/full.pkr.hcl");
    let (plan, diags, sources) = run(&path);
    plan.unwrap_or_else(|| panic!("{}", diag::render(&sources, &diags, false)))
        .builds
}

fn names(builds: &[kiln_core::plan::Build]) -> Vec<&str> {
    builds.iter().map(|b| b.name.as_str()).collect()
}

#[test]
fn select_with_only_and_except_globs() {
    let all = two_builds();
    assert_eq!(names(&all), ["images.null.first", "images.null.renamed"]);
    let s = |only: &[&str], except: &[&str]| {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let except: Vec<String> = except.iter().map(|s| s.to_string()).collect();
        plan::select(two_builds(), &only, &except)
    };
    assert_eq!(names(&s(&[], &[]).unwrap()), names(&all));
    assert_eq!(
        names(&s(&["null.first"], &[]).unwrap()),
        ["images.null.first"]
    );
    assert_eq!(
        names(&s(&["*.renamed"], &[]).unwrap()),
        ["images.null.renamed"]
    );
    assert_eq!(
        names(&s(&["images.*"], &["null.first"]).unwrap()),
        ["images.null.renamed"]
    );
    assert_eq!(names(&s(&[], &["null.*"]).unwrap()), Vec::<&str>::new());
    let err = s(&["docker.*"], &[]).unwrap_err();
    assert_eq!(err.message, "`-only docker.*` matches no build");
    assert_eq!(
        err.help.as_deref(),
        Some("available builds: `images.null.first`, `images.null.renamed`")
    );
    assert!(s(&["[bad"], &[]).is_err());
}

#[test]
fn runtime_evaluation_fills_build_values() {
    let build = &two_builds()[1];
    let p = &build.provisioners[0].component;
    let mut rt = kiln_core::plan::RuntimeVars::default();
    rt.values.insert("Host".into(), "10.0.2.15".into());
    let config = p.body.evaluate(&build.scope, Some(&rt), &p.kind).unwrap();
    assert_eq!(
        config.to_json()["inline"],
        serde_json::json!(["echo images renamed debug-img", "echo 10.0.2.15"])
    );
}

#[test]
fn every_function_is_documented() {
    let docs = std::fs::read_to_string(crate_dir().join("../../docs/templates.md")).unwrap();
    let missing: Vec<&str> = template::FUNCTIONS
        .iter()
        .copied()
        .filter(|f| !docs.contains(&format!("`{f}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "functions missing from docs/templates.md: {missing:?}"
    );
}

// ---- Loading never fails: damaged templates give diagnostics, never a panic ----

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn damaged_templates_never_panic(
        which in 0usize..1000,
        cut in 0usize..4000,
        len in 0usize..40,
        insert in "[{}\\[\\]\"$%=.,:a-z0-9 \n\u{e9}\u{1F600}]{0,12}",
    ) {
        let mut fixtures: Vec<PathBuf> = ["valid", "invalid"]
            .iter()
            .flat_map(|d| std::fs::read_dir(crate_dir().join("tests/fixtures").join(d)).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| is_fixture(p))
            .collect();
        fixtures.sort();
        let path = &fixtures[which % fixtures.len()];
        let text = std::fs::read_to_string(path).unwrap();
        let mut start = cut.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + len).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let damaged = format!("{}{insert}{}", &text[..start], &text[end..]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(path.file_name().unwrap());
        std::fs::write(&file, damaged).unwrap();
        let opts = LoadOptions { path: file, ..LoadOptions::default() };
        let loaded = template::load(&opts);
        let (plan, diags) = template::plan(&loaded, &opts, &registry());
        let rendered = diag::render(&loaded.sources, &diags, false);
        proptest::prop_assert!(plan.is_some() || diags.has_errors(), "{rendered}");
    }
}
