//! Decoding and checking a `shell-local` block into [`Settings`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use serde::Deserialize;

/// The options as written (see `docs/provisioners/shell-local.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    command: Option<String>,
    inline: Option<Vec<String>>,
    script: Option<PathBuf>,
    scripts: Option<Vec<PathBuf>>,
    environment_vars: Vec<String>,
    env: BTreeMap<String, String>,
    execute_command: Option<Vec<String>>,
    inline_shebang: Option<String>,
    only_on: Vec<String>,
    valid_exit_codes: Option<Vec<i32>>,
    tempfile_extension: Option<String>,
    // Accepted for Packer compatibility; nothing to do on Linux.
    #[allow(dead_code)]
    use_linux_pathing: bool,
    // The post-processor's; the input artifact is always kept.
    #[allow(dead_code)]
    keep_input_artifact: Option<bool>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Work {
    /// Lines for a temporary script; `label` names them in errors (`command` or `inline`).
    Inline {
        label: &'static str,
        lines: Vec<String>,
    },
    /// Local scripts, absolute paths, run in order.
    Scripts(Vec<PathBuf>),
}

/// A checked `shell-local` configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub work: Work,
    /// Variables from `environment_vars` and `env`, the latter winning.
    pub env: BTreeMap<String, String>,
    pub execute_command: Vec<String>,
    pub inline_shebang: String,
    /// Empty: run on every operating system.
    pub only_on: Vec<String>,
    pub valid_exit_codes: Vec<i32>,
    /// Without the leading dot; empty for none.
    pub tempfile_extension: String,
}

const DEFAULT_EXECUTE_COMMAND: [&str; 3] = ["/bin/sh", "-c", "{{.Vars}} {{.Script}}"];
const DEFAULT_SHEBANG: &str = "/bin/sh -e";

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Result<Settings, Diagnostics> {
        let opts: Options = config.decode()?;
        let mut diags = Diagnostics::new();

        let given: Vec<&str> = [
            ("command", opts.command.is_some()),
            ("inline", opts.inline.is_some()),
            ("script", opts.script.is_some()),
            ("scripts", opts.scripts.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if given.len() != 1 {
            let message = if given.is_empty() {
                "`shell-local` needs one of `command`, `inline`, `script` or `scripts`".to_string()
            } else {
                format!(
                    "`shell-local` takes only one of `command`, `inline`, `script` or `scripts`, \
                     but {} are set",
                    given
                        .iter()
                        .map(|g| format!("`{g}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            };
            diags.push(Diagnostic::error(message).at(config.span));
        }

        let work = if let Some(command) = opts.command {
            Work::Inline {
                label: "command",
                lines: vec![command],
            }
        } else if let Some(lines) = opts.inline {
            Work::Inline {
                label: "inline",
                lines,
            }
        } else {
            let (key, paths) = match (opts.script, opts.scripts) {
                (Some(p), _) => ("script", vec![p]),
                (None, ps) => ("scripts", ps.unwrap_or_default()),
            };
            if given == ["scripts"] && paths.is_empty() {
                diags.push(Diagnostic::error("`scripts` is empty").at(config.span_of("scripts")));
            }
            let mut absolute = Vec::new();
            for path in paths {
                match std::path::absolute(&path) {
                    Ok(abs) if abs.is_file() => absolute.push(abs),
                    _ => diags.push(
                        Diagnostic::error(format!("script `{}` does not exist", path.display()))
                            .at(config.span_of(key)),
                    ),
                }
            }
            Work::Scripts(absolute)
        };

        let mut env = BTreeMap::new();
        for pair in &opts.environment_vars {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    env.insert(k.to_string(), v.to_string());
                }
                _ => diags.push(
                    Diagnostic::error(format!(
                        "environment variable `{pair}` is not of the form `KEY=VALUE`"
                    ))
                    .at(config.span_of("environment_vars")),
                ),
            }
        }
        env.extend(opts.env);

        let execute_command = opts
            .execute_command
            .unwrap_or_else(|| DEFAULT_EXECUTE_COMMAND.map(String::from).to_vec());
        if execute_command.is_empty() || execute_command[0].is_empty() {
            diags.push(
                Diagnostic::error("`execute_command` needs at least a program")
                    .at(config.span_of("execute_command")),
            );
        }

        let valid_exit_codes = opts.valid_exit_codes.unwrap_or_else(|| vec![0]);
        if valid_exit_codes.is_empty() {
            diags.push(
                Diagnostic::error("`valid_exit_codes` is empty, so every run would fail")
                    .at(config.span_of("valid_exit_codes")),
            );
        }

        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Settings {
            work,
            env,
            execute_command,
            inline_shebang: opts
                .inline_shebang
                .unwrap_or_else(|| DEFAULT_SHEBANG.to_string()),
            only_on: opts.only_on,
            valid_exit_codes,
            tempfile_extension: opts
                .tempfile_extension
                .unwrap_or_default()
                .trim_start_matches('.')
                .to_string(),
        })
    }
}
