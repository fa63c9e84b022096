//! The `kiln` command line: parses arguments, runs one subcommand, maps the outcome to an exit
//! status (see `docs/cli.md`).

mod argv;
mod cli;
mod commands;
mod components;
mod exit;
mod hclfmt;
mod render;
mod signals;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::exit::{CliError, Status};

fn main() {
    let args = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = argv::normalize(Cli::command(), args);
    let cli = match Cli::parse_from_argv(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("error: internal error, please report");
        default_hook(info);
    }));
    let status = match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            e.report();
            e.status()
        }
        Err(_) => Status::Failed,
    };
    std::process::exit(status.code());
}

fn run(cli: Cli) -> Result<Status, CliError> {
    match cli.command {
        Some(Command::Build(args)) => commands::build::run(args),
        Some(Command::Validate(args)) => commands::validate::run(args),
        Some(Command::Inspect(args)) => commands::inspect::run(args),
        Some(Command::Fmt(args)) => commands::fmt::run(args),
        Some(Command::Completions(args)) => commands::completions::run(args),
        Some(Command::Version) => commands::version::run(),
        None if cli.version => commands::version::run(),
        None => {
            let _ = Cli::command().print_help();
            Ok(Status::Usage)
        }
    }
}
