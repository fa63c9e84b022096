//! `kiln validate`: loads and plans a template, reports every problem, runs nothing.

use kiln_core::template;

use crate::cli::ValidateArgs;
use crate::commands::{load_options, load_plan, print_diagnostics};
use crate::components;
use crate::exit::{CliError, Status};

pub fn run(args: ValidateArgs) -> Result<Status, CliError> {
    let opts = load_options(&args.path, &args.vars.ordered);
    let color = args.color.color;
    if args.syntax_only {
        let loaded = template::load(&opts);
        print_diagnostics(&loaded.sources, &loaded.diagnostics, color);
        if loaded.diagnostics.has_errors() {
            return Err(CliError::Reported(Status::Usage));
        }
        println!("Syntax-only check passed. Everything looks okay.");
        return Ok(Status::Success);
    }
    load_plan(&opts, Some(&args.select), &components::registry(), color)?;
    println!("The configuration is valid.");
    Ok(Status::Success)
}
