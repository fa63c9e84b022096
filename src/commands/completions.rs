//! `kiln completions SHELL`: prints a completion script generated from the clap definitions.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::{CliError, Status};

pub fn run(args: CompletionsArgs) -> Result<Status, CliError> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "kiln",
        &mut std::io::stdout(),
    );
    Ok(Status::Success)
}
