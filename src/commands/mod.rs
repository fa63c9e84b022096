//! One module per subcommand, and the template loading they share.

pub mod build;
pub mod completions;
pub mod fmt;
pub mod inspect;
pub mod validate;
pub mod version;

use std::io::IsTerminal;
use std::path::Path;

use kiln_core::component::Registry;
use kiln_core::diag::{self, Diagnostics, SourceMap};
use kiln_core::plan::{self, BuildPlan};
use kiln_core::template::{self, LoadOptions, VarArg};

use crate::cli::SelectArgs;
use crate::exit::{CliError, Status};
use crate::render::color_enabled;

/// The options for loading the template at `path`, with the process environment.
pub(crate) fn load_options(path: &Path, vars: &[VarArg]) -> LoadOptions {
    LoadOptions {
        path: path.to_path_buf(),
        var_args: vars.to_vec(),
        env: std::env::vars().collect(),
    }
}

/// Prints diagnostics to stderr.
pub(crate) fn print_diagnostics(sources: &SourceMap, diags: &Diagnostics, color: bool) {
    if diags.is_empty() {
        return;
    }
    let color = color_enabled(color, std::io::stderr().is_terminal());
    let text = diag::render(sources, diags, color);
    if text.ends_with('\n') {
        eprint!("{text}");
    } else {
        eprintln!("{text}");
    }
}

/// Loads, plans and selects builds, printing every diagnostic. Errors have been reported when
/// this returns `Err(CliError::Reported(_))`.
pub(crate) fn load_plan(
    opts: &LoadOptions,
    select: Option<&SelectArgs>,
    registry: &Registry,
    color: bool,
) -> Result<BuildPlan, CliError> {
    let loaded = template::load(opts);
    // Plan even when loading found errors, so one run reports every problem; `plan` stops early
    // only when a file could not be read or parsed (the model would be missing its blocks).
    // `plan`'s diagnostics include the loader's, with sensitive values redacted.
    let (plan, all) = template::plan(&loaded, opts, registry);
    let sources = plan
        .as_ref()
        .map_or_else(|| loaded.sources.clone(), |p| p.sources.clone());
    print_diagnostics(&sources, &all, color);
    let mut plan = match plan {
        Some(plan) if !all.has_errors() => plan,
        _ => return Err(CliError::Reported(Status::Usage)),
    };
    if let Some(select) = select {
        let builds = std::mem::take(&mut plan.builds);
        match plan::select(builds, &select.only, &select.except) {
            Ok(builds) => plan.builds = builds,
            Err(d) => {
                print_diagnostics(&plan.sources, &d.into(), color);
                return Err(CliError::Reported(Status::Usage));
            }
        }
    }
    Ok(plan)
}
