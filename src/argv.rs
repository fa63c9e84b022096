//! Packer's single-dash spellings (`-only=x`, `-var a=b`, `-color=false`): rewritten to clap's
//! `--long` form before parsing, using the flag definitions of `cli.rs` so nothing is listed twice.

use clap::Command;

/// What the normalizer needs to know about one long flag.
struct Flag {
    name: String,
    /// The next token is the flag's value (`-var a=b`), unless given as `-name=value`.
    takes_next: bool,
}

fn flags_of(cmd: &Command) -> Vec<Flag> {
    cmd.get_arguments()
        .filter_map(|a| {
            let name = a.get_long()?.to_string();
            let takes_values = a.get_num_args().is_some_and(|n| n.takes_values());
            let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
            Some(Flag {
                name,
                takes_next: takes_values && !optional && !a.is_require_equals_set(),
            })
        })
        .collect()
}

/// Rewrites `-name` and `-name=value` into `--name...` when `name` is a long flag (of more than
/// one letter) of the command being parsed. Values of flags and everything after `--` are
/// left alone.
pub fn normalize(mut cmd: Command, args: Vec<String>) -> Vec<String> {
    cmd.build();
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut flags = flags_of(&cmd);
    let mut in_subcommand = false;
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(iter);
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let takes_next =
                !long.contains('=') && flags.iter().any(|f| f.name == long && f.takes_next);
            out.push(arg);
            if takes_next {
                out.extend(iter.next());
            }
            continue;
        }
        if let Some(body) = arg.strip_prefix('-') {
            let name = body.split_once('=').map_or(body, |(n, _)| n);
            if let Some(flag) = flags.iter().find(|f| f.name == name && name.len() > 1) {
                let takes_next = flag.takes_next && !body.contains('=');
                out.push(format!("--{body}"));
                if takes_next {
                    out.extend(iter.next());
                }
                continue;
            }
            out.push(arg);
            continue;
        }
        if !in_subcommand {
            if let Some(sub) = cmd.find_subcommand(&arg) {
                flags = flags_of(sub);
                in_subcommand = true;
            }
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn norm(args: &[&str]) -> Vec<String> {
        let args = std::iter::once("kiln")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        normalize(crate::cli::Cli::command(), args)[1..].to_vec()
    }

    #[test]
    fn single_dash_flags_become_long() {
        assert_eq!(
            norm(&[
                "build",
                "-only=a,b",
                "-on-error=abort",
                "-parallel-builds",
                "2",
                "-force",
                "."
            ]),
            [
                "build",
                "--only=a,b",
                "--on-error=abort",
                "--parallel-builds",
                "2",
                "--force",
                "."
            ]
        );
        assert_eq!(
            norm(&["validate", "-syntax-only", "-color=false", "t.pkr.hcl"]),
            ["validate", "--syntax-only", "--color=false", "t.pkr.hcl"]
        );
        assert_eq!(
            norm(&["build", "-machine-readable", "x"])[1],
            "--machine-readable"
        );
        assert_eq!(norm(&["-version"]), ["--version"]);
    }

    #[test]
    fn values_of_flags_are_untouched() {
        assert_eq!(
            norm(&[
                "build",
                "-var",
                "-only=x",
                "-var",
                "--force",
                "-var-file",
                "-f",
                "."
            ]),
            [
                "build",
                "--var",
                "-only=x",
                "--var",
                "--force",
                "--var-file",
                "-f",
                "."
            ]
        );
        assert_eq!(
            norm(&["build", "--var", "-force", "."]),
            ["build", "--var", "-force", "."]
        );
        assert_eq!(
            norm(&["build", "-var=a=-force", "."]),
            ["build", "--var=a=-force", "."]
        );
    }

    #[test]
    fn color_does_not_take_the_next_token() {
        assert_eq!(
            norm(&["build", "-color", "-force", "."]),
            ["build", "--color", "--force", "."]
        );
    }

    #[test]
    fn unknown_short_and_after_double_dash_are_untouched() {
        assert_eq!(norm(&["build", "-h"]), ["build", "-h"]);
        assert_eq!(norm(&["build", "-nope", "."]), ["build", "-nope", "."]);
        assert_eq!(
            norm(&["fmt", "-check", "--", "-check"]),
            ["fmt", "--check", "--", "-check"]
        );
        // A flag of another subcommand is not rewritten.
        assert_eq!(norm(&["fmt", "-force"]), ["fmt", "-force"]);
        assert_eq!(norm(&["fmt", "-"]), ["fmt", "-"]);
    }
}
