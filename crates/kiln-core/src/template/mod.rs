//! Templates in Packer's HCL2 dialect and its JSON form: loading, variables, evaluation, and the
//! resolution of a [`BuildPlan`](crate::plan::BuildPlan). Parsing never stops at the first error.

use std::path::PathBuf;
use std::sync::Arc;

pub mod eval;

use crate::component::Registry;
use crate::diag::{Diagnostics, SourceMap};
use crate::plan::BuildPlan;

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
#[derive(Debug, Clone)]
pub struct Template {
    // Filled by the template module.
}

/// The result of [`load`]: never fails; problems are in `diagnostics`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub sources: Arc<SourceMap>,
    pub template: Template,
    pub diagnostics: Diagnostics,
}

/// Reads and parses the template file(s) at `path` (syntax and block structure only).
pub fn load(opts: &LoadOptions) -> Loaded {
    let _ = opts;
    todo!("template helper")
}

/// Resolves variables, locals and builds into a plan, checking every component's options
/// against `registry`. Returns the plan when there are no errors, and all diagnostics.
pub fn plan(
    loaded: &Loaded,
    opts: &LoadOptions,
    registry: &Registry,
) -> (Option<BuildPlan>, Diagnostics) {
    let _ = (loaded, opts, registry);
    todo!("template helper")
}
