//! `kiln inspect`: the variables, sources and builds of a template, as plain text.

use std::collections::BTreeSet;
use std::fmt::Write;

use kiln_core::plan::{BuildPlan, ComponentSpec};

use crate::cli::InspectArgs;
use crate::commands::{load_options, load_plan};
use crate::components;
use crate::exit::{CliError, Status};

pub fn run(args: InspectArgs) -> Result<Status, CliError> {
    let opts = load_options(&args.path, &args.vars.ordered);
    let plan = load_plan(&opts, None, &components::registry(), true)?;
    print!("{}", describe(&plan));
    Ok(Status::Success)
}

fn component(c: &ComponentSpec) -> String {
    match &c.name {
        Some(name) => format!("{} ({name})", c.kind),
        None => c.kind.clone(),
    }
}

/// The text `kiln inspect` prints. Sensitive variables show `<sensitive>`.
pub fn describe(plan: &BuildPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "> input-variables:\n");
    for v in &plan.variables {
        let value = match (&v.value, v.sensitive) {
            (_, true) => kiln_core::event::REDACTED.to_string(),
            (Some(value), false) => value.clone(),
            (None, false) => "<unknown>".to_string(),
        };
        let _ = writeln!(s, "var.{}: {value}  [{}, from {}]", v.name, v.ty, v.source);
        if let Some(d) = &v.description {
            let _ = writeln!(s, "    {d}");
        }
    }
    let sources: BTreeSet<String> = plan
        .builds
        .iter()
        .map(|b| format!("{}.{}", b.source_type, b.source_name))
        .collect();
    let _ = writeln!(s, "\n> sources:\n");
    for src in &sources {
        let _ = writeln!(s, "  {src}");
    }
    let _ = writeln!(s, "\n> builds:");
    for b in &plan.builds {
        let _ = writeln!(s, "\n  > {}:", b.name);
        let _ = writeln!(s, "    source: {}.{}", b.source_type, b.source_name);
        if !b.provisioners.is_empty() {
            let _ = writeln!(s, "    provisioners:");
            for p in &b.provisioners {
                let _ = writeln!(s, "      {}", component(&p.component));
            }
        }
        if let Some(p) = &b.error_cleanup_provisioner {
            let _ = writeln!(
                s,
                "    error-cleanup-provisioner: {}",
                component(&p.component)
            );
        }
        if !b.post_processors.is_empty() {
            let _ = writeln!(s, "    post-processors:");
            for (i, chain) in b.post_processors.iter().enumerate() {
                let names: Vec<String> = chain.iter().map(|p| component(&p.component)).collect();
                let _ = writeln!(s, "      {i}: {}", names.join(" -> "));
            }
        }
    }
    s
}
