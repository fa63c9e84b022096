//! Templates in Packer's HCL2 dialect and its JSON form: loading, variables, evaluation, and the
//! resolution of a [`BuildPlan`](crate::plan::BuildPlan). Parsing never stops at the first error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod eval;
mod funcs;
mod json;
pub mod model;
mod parse;
mod resolve;
pub mod types;
mod vars;

use crate::component::Registry;
use crate::diag::{Diagnostic, Diagnostics, FileId, SourceMap};
use crate::plan::BuildPlan;

pub use funcs::NAMES as FUNCTIONS;
use model::{Model, VarFile};

/// A variable value from the command line, in the order given (later wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarArg {
    /// `-var-file PATH`
    File(PathBuf),
    /// `-var NAME=VALUE` (the value is parsed by the variable's type).
    Var(String, String),
}

/// What to load and with which variable inputs.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A template file (`*.pkr.hcl`, `*.pkr.json`) or a directory of them.
    pub path: PathBuf,
    pub var_args: Vec<VarArg>,
    /// The process environment (for `PKR_VAR_*`, `KILN_VAR_*` and `env()`), as pairs.
    pub env: Vec<(String, String)>,
}

/// A parsed template (possibly partial) and its sources.
#[derive(Debug, Clone, Default)]
pub struct Template {
    /// The directory of the template (`path.root`).
    pub root: PathBuf,
    /// Variables, locals, sources and builds from all the template's files.
    pub model: Model,
    /// Automatic var files (lexical order), then `-var-file` files (command-line order).
    pub var_files: Vec<VarFile>,
    /// Some file could not be read or parsed, so the model is incomplete: [`plan`] then reports
    /// only the loading problems, since references into the missing parts would all fail.
    pub incomplete: bool,
}

/// The result of [`load`]: never fails; problems are in `diagnostics`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub sources: Arc<SourceMap>,
    pub template: Template,
    pub diagnostics: Diagnostics,
}

/// What a file name says about its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Hcl,
    Json,
    AutoVars,
    Other,
}

fn file_kind(path: &Path) -> FileKind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".auto.pkrvars.hcl") || name.ends_with(".auto.pkrvars.json") {
        FileKind::AutoVars
    } else if name.ends_with(".pkr.hcl") {
        FileKind::Hcl
    } else if name.ends_with(".pkr.json") {
        FileKind::Json
    } else {
        FileKind::Other
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Reads and parses the template file(s) at `path` (syntax and block structure only), and the
/// var files: `*.auto.pkrvars.*` beside a template directory's files and every `-var-file`.
pub fn load(opts: &LoadOptions) -> Loaded {
    let mut sources = SourceMap::new();
    let mut diags = Diagnostics::new();
    let mut template = Template::default();
    let path = &opts.path;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut auto_vars: Vec<PathBuf> = Vec::new();
    if path.is_dir() {
        template.root = path.clone();
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for p in paths.into_iter().filter(|p| p.is_file()) {
                    match file_kind(&p) {
                        FileKind::Hcl | FileKind::Json => files.push(p),
                        FileKind::AutoVars => auto_vars.push(p),
                        FileKind::Other => {}
                    }
                }
                if files.is_empty() {
                    template.incomplete = true;
                    diags.push(Diagnostic::error(format!(
                        "no template files (`*.pkr.hcl`, `*.pkr.json`) in `{}`",
                        path.display()
                    )));
                }
            }
            Err(e) => {
                template.incomplete = true;
                diags.push(Diagnostic::error(format!(
                    "cannot read directory `{}`: {e}",
                    path.display()
                )))
            }
        }
    } else {
        template.root = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        files.push(path.clone());
    }

    for file in &files {
        let Some((id, text)) = read(&mut sources, file, &mut diags) else {
            template.incomplete = true;
            continue;
        };
        let body = if is_json(file) {
            json::parse_template(id, &text, &mut diags)
        } else {
            parse::parse_hcl(id, &text, &mut diags)
        };
        match body {
            Some(body) => template.model.add_file(&body, &mut diags),
            None => template.incomplete = true,
        }
    }

    let var_files =
        auto_vars
            .into_iter()
            .map(|p| (p, true))
            .chain(opts.var_args.iter().filter_map(|a| match a {
                VarArg::File(p) => Some((p.clone(), false)),
                VarArg::Var(..) => None,
            }));
    for (file, auto) in var_files {
        let Some((id, text)) = read(&mut sources, &file, &mut diags) else {
            template.incomplete = true;
            continue;
        };
        let body = if is_json(&file) {
            json::parse_values(id, &text, &mut diags)
        } else {
            parse::parse_hcl(id, &text, &mut diags)
        };
        let Some(body) = body else {
            template.incomplete = true;
            continue;
        };
        for block in &body.blocks {
            diags.push(
                Diagnostic::error(format!("unexpected block `{}` in a var file", block.ident))
                    .at(block.ident_span)
                    .with_help("var files only set variables: `name = value`"),
            );
        }
        template.var_files.push(VarFile {
            path: file,
            auto,
            values: body.attrs,
        });
    }

    Loaded {
        sources: Arc::new(sources),
        template,
        diagnostics: diags,
    }
}

fn read(sources: &mut SourceMap, path: &Path, diags: &mut Diagnostics) -> Option<(FileId, String)> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some((sources.add(path, text.clone()), text)),
        Err(e) => {
            diags.push(Diagnostic::error(format!(
                "cannot read `{}`: {e}",
                path.display()
            )));
            None
        }
    }
}

/// Resolves variables, locals and builds into a plan, checking every component's options
/// against `registry`. Returns the plan when there are no errors, and all diagnostics, those of
/// [`load`] included (so callers render only these).
pub fn plan(
    loaded: &Loaded,
    opts: &LoadOptions,
    registry: &Registry,
) -> (Option<BuildPlan>, Diagnostics) {
    resolve::plan(loaded, opts, registry)
}
