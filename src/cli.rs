//! The command-line interface, defined once: every subcommand and flag with its help text.
//! `docs/cli.md` documents the same flags (a test checks that none is missing).

use std::path::PathBuf;

use clap::{ArgAction, ArgMatches, Args, Parser, Subcommand, ValueEnum};
use kiln_core::runner::OnError;
use kiln_core::template::VarArg;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    about = "Build immutable machine images from Packer-style HCL templates",
    disable_version_flag = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print the version and exit
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the builds of a template
    Build(BuildArgs),
    /// Check that a template is valid
    Validate(ValidateArgs),
    /// Show the variables, sources and builds of a template
    Inspect(InspectArgs),
    /// Rewrite HCL template files in the canonical format
    Fmt(FmtArgs),
    /// Print the version
    Version,
    /// Print a shell completion script
    Completions(CompletionsArgs),
}

/// `-var` and `-var-file`, in the order given on the command line.
#[derive(Debug, Args)]
pub struct VarArgs {
    /// Set a template variable (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE", allow_hyphen_values = true, value_parser = parse_var)]
    pub var: Vec<(String, String)>,

    /// Read template variables from a file (repeatable)
    #[arg(long = "var-file", value_name = "PATH", allow_hyphen_values = true)]
    pub var_file: Vec<PathBuf>,

    /// `var` and `var_file` interleaved as given; filled by [`Cli::parse_from_argv`].
    #[arg(skip)]
    pub ordered: Vec<VarArg>,
}

/// `-only` and `-except`.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Run only the builds matching these comma-separated globs (e.g. `null.*`)
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "GLOBS",
        allow_hyphen_values = true
    )]
    pub only: Vec<String>,

    /// Skip the builds matching these comma-separated globs
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "GLOBS",
        allow_hyphen_values = true
    )]
    pub except: Vec<String>,
}

/// `-color=BOOL`.
#[derive(Debug, Args)]
pub struct ColorArgs {
    /// Colour the output (`-color=false` turns it off; so do `NO_COLOR` and a non-terminal)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true",
        action = ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub color: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub vars: VarArgs,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub color: ColorArgs,

    /// Run at most N builds at once (0 means no limit)
    #[arg(long = "parallel-builds", value_name = "N", default_value_t = 0)]
    pub parallel_builds: usize,

    /// What to do when a build fails
    #[arg(
        long = "on-error",
        value_enum,
        value_name = "ACTION",
        default_value = "cleanup"
    )]
    pub on_error: OnErrorArg,

    /// Replace existing output (builders decide what that means)
    #[arg(long)]
    pub force: bool,

    /// Prefix every line of output with its time (RFC 3339)
    #[arg(long = "timestamp-ui")]
    pub timestamp_ui: bool,

    /// Print events as JSON lines on stdout (same as `--json`)
    #[arg(long = "machine-readable")]
    pub machine_readable: bool,

    /// Print events as JSON lines on stdout, one object per line
    #[arg(long)]
    pub json: bool,

    /// A template file or a directory of template files
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnErrorArg {
    /// Clean up everything (the default)
    Cleanup,
    /// Leave everything in place and say how to reach it
    Abort,
    /// Ask what to do
    Ask,
    /// Run the build's error-cleanup-provisioner, then leave everything in place
    RunCleanupProvisioner,
}

impl From<OnErrorArg> for OnError {
    fn from(arg: OnErrorArg) -> Self {
        match arg {
            OnErrorArg::Cleanup => OnError::Cleanup,
            OnErrorArg::Abort => OnError::Abort,
            OnErrorArg::Ask => OnError::Ask,
            OnErrorArg::RunCleanupProvisioner => OnError::RunCleanupProvisioner,
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Only check the syntax, not variables or component options
    #[arg(long = "syntax-only")]
    pub syntax_only: bool,

    #[command(flatten)]
    pub vars: VarArgs,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub color: ColorArgs,

    /// A template file or a directory of template files
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub vars: VarArgs,

    /// A template file or a directory of template files
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Do not write files; exit with status 3 if any file is not formatted
    #[arg(long)]
    pub check: bool,

    /// Print a unified diff of the changes
    #[arg(long)]
    pub diff: bool,

    /// Also format files in subdirectories
    #[arg(long)]
    pub recursive: bool,

    /// Files or directories to format (`-` reads stdin); the current directory by default
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

impl Cli {
    /// Parses already-normalized arguments (see [`crate::argv`]), keeping the command-line order
    /// of `-var` and `-var-file`.
    pub fn parse_from_argv(args: Vec<String>) -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let Some((_, sub)) = matches.subcommand() {
            let vars = match &mut cli.command {
                Some(Command::Build(a)) => Some(&mut a.vars),
                Some(Command::Validate(a)) => Some(&mut a.vars),
                Some(Command::Inspect(a)) => Some(&mut a.vars),
                _ => None,
            };
            if let Some(vars) = vars {
                vars.ordered = ordered_vars(sub);
            }
        }
        Ok(cli)
    }
}

/// `-var` and `-var-file` values sorted by their position on the command line.
fn ordered_vars(m: &ArgMatches) -> Vec<VarArg> {
    let mut all: Vec<(usize, VarArg)> = Vec::new();
    if let (Some(values), Some(indices)) =
        (m.get_many::<(String, String)>("var"), m.indices_of("var"))
    {
        for (i, (n, v)) in indices.zip(values) {
            all.push((i, VarArg::Var(n.clone(), v.clone())));
        }
    }
    if let (Some(values), Some(indices)) =
        (m.get_many::<PathBuf>("var_file"), m.indices_of("var_file"))
    {
        for (i, p) in indices.zip(values) {
            all.push((i, VarArg::File(p.clone())));
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::parse_from_argv(args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn vars_keep_command_line_order() {
        let cli = parse(&[
            "kiln",
            "build",
            "--var-file",
            "a.pkrvars.hcl",
            "--var",
            "x=1",
            "--var-file=b",
            "--var",
            "y=a=b",
            ".",
        ]);
        let Some(Command::Build(b)) = cli.command else {
            panic!("not build")
        };
        assert_eq!(
            b.vars.ordered,
            vec![
                VarArg::File("a.pkrvars.hcl".into()),
                VarArg::Var("x".into(), "1".into()),
                VarArg::File("b".into()),
                VarArg::Var("y".into(), "a=b".into()),
            ]
        );
    }

    #[test]
    fn color_takes_an_optional_value() {
        let Some(Command::Build(b)) = parse(&["kiln", "build", "--color=false", "."]).command
        else {
            panic!("not build")
        };
        assert!(!b.color.color);
        let Some(Command::Build(b)) = parse(&["kiln", "build", "--color", "."]).command else {
            panic!("not build")
        };
        assert!(b.color.color);
        assert_eq!(b.path, PathBuf::from("."));
    }

    #[test]
    fn every_flag_is_documented() {
        use clap::CommandFactory;
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md"))
            .expect("docs/cli.md");
        for sub in Cli::command().get_subcommands() {
            assert!(
                docs.contains(&format!("## `kiln {}", sub.get_name())),
                "`kiln {}` has no section in docs/cli.md",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    assert!(
                        docs.contains(&format!("`-{long}")),
                        "`-{long}` of `kiln {}` is not in docs/cli.md",
                        sub.get_name()
                    );
                }
            }
        }
    }

    #[test]
    fn only_splits_on_commas() {
        let Some(Command::Validate(v)) = parse(&[
            "kiln",
            "validate",
            "--only=null.a,null.b",
            "--only",
            "x",
            ".",
        ])
        .command
        else {
            panic!("not validate")
        };
        assert_eq!(v.select.only, ["null.a", "null.b", "x"]);
    }
}
