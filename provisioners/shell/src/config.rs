//! Decoding and checking a `shell` block into [`Settings`].

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use kiln_comm::ssh::parse_go_duration;
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use serde::Deserialize;

/// The options as written (see `docs/provisioners/shell.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    inline: Option<Vec<String>>,
    script: Option<PathBuf>,
    scripts: Option<Vec<PathBuf>>,
    environment_vars: Vec<String>,
    env: BTreeMap<String, String>,
    execute_command: Option<String>,
    inline_shebang: Option<String>,
    remote_folder: Option<String>,
    remote_file: Option<String>,
    remote_path: Option<String>,
    skip_clean: bool,
    expect_disconnect: bool,
    valid_exit_codes: Option<Vec<i32>>,
    start_retry_timeout: Option<String>,
    pause_after: Option<String>,
    binary: bool,
}

/// One script to upload and run.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// For messages: `inline commands` or ``script `path` ``.
    pub what: String,
    pub content: Vec<u8>,
}

/// A checked `shell` configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub scripts: Vec<Script>,
    /// Variables from `environment_vars` and `env`, the latter winning.
    pub env: BTreeMap<String, String>,
    pub execute_command: String,
    pub remote_path: String,
    pub skip_clean: bool,
    pub expect_disconnect: bool,
    pub valid_exit_codes: Vec<i32>,
    pub start_retry_timeout: Duration,
    pub pause_after: Option<Duration>,
}

const DEFAULT_EXECUTE_COMMAND: &str = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
const DEFAULT_SHEBANG: &str = "/bin/sh -e";
const DEFAULT_REMOTE_FOLDER: &str = "/tmp";
const DEFAULT_START_RETRY_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// `script_<random>.sh`, as Packer names uploaded scripts.
fn random_script_name() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 100_000;
    format!("script_{n}.sh")
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Result<Settings, Diagnostics> {
        let opts: Options = config.decode()?;
        let mut diags = Diagnostics::new();

        let given: Vec<&str> = [
            ("inline", opts.inline.is_some()),
            ("script", opts.script.is_some()),
            ("scripts", opts.scripts.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if given.len() != 1 {
            let message = if given.is_empty() {
                "`shell` needs one of `inline`, `script` or `scripts`".to_string()
            } else {
                format!(
                    "`shell` takes only one of `inline`, `script` or `scripts`, but {} are set",
                    given
                        .iter()
                        .map(|g| format!("`{g}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            };
            diags.push(Diagnostic::error(message).at(config.span));
        }

        let mut scripts = Vec::new();
        if let Some(lines) = opts.inline {
            let shebang = opts
                .inline_shebang
                .unwrap_or_else(|| DEFAULT_SHEBANG.to_string());
            let mut text = format!("#!{shebang}\n");
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
            scripts.push(Script {
                what: "inline commands".to_string(),
                content: text.into_bytes(),
            });
        } else {
            let (key, paths) = match (opts.script, opts.scripts) {
                (Some(p), _) => ("script", vec![p]),
                (None, ps) => ("scripts", ps.unwrap_or_default()),
            };
            if given == ["scripts"] && paths.is_empty() {
                diags.push(Diagnostic::error("`scripts` is empty").at(config.span_of("scripts")));
            }
            for path in paths {
                match std::fs::read(&path) {
                    Ok(mut content) => {
                        if !opts.binary {
                            content = unix_line_endings(content);
                        }
                        scripts.push(Script {
                            what: format!("script `{}`", path.display()),
                            content,
                        });
                    }
                    Err(e) => diags.push(
                        Diagnostic::error(format!("cannot read script `{}`: {e}", path.display()))
                            .at(config.span_of(key)),
                    ),
                }
            }
        }

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

        let valid_exit_codes = opts.valid_exit_codes.unwrap_or_else(|| vec![0]);
        if valid_exit_codes.is_empty() {
            diags.push(
                Diagnostic::error("`valid_exit_codes` is empty, so every run would fail")
                    .at(config.span_of("valid_exit_codes")),
            );
        }

        let mut duration = |key: &str, text: Option<String>| {
            text.and_then(|t| match parse_go_duration(&t) {
                Ok(d) => Some(d),
                Err(e) => {
                    diags.push(Diagnostic::error(e.to_string()).at(config.span_of(key)));
                    None
                }
            })
        };
        let start_retry_timeout = duration("start_retry_timeout", opts.start_retry_timeout)
            .unwrap_or(DEFAULT_START_RETRY_TIMEOUT);
        let pause_after = duration("pause_after", opts.pause_after);

        let remote_path = opts.remote_path.unwrap_or_else(|| {
            let folder = opts
                .remote_folder
                .unwrap_or_else(|| DEFAULT_REMOTE_FOLDER.to_string());
            let file = opts.remote_file.unwrap_or_else(random_script_name);
            format!("{}/{file}", folder.trim_end_matches('/'))
        });

        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Settings {
            scripts,
            env,
            execute_command: opts
                .execute_command
                .unwrap_or_else(|| DEFAULT_EXECUTE_COMMAND.to_string()),
            remote_path,
            skip_clean: opts.skip_clean,
            expect_disconnect: opts.expect_disconnect,
            valid_exit_codes,
            start_retry_timeout,
            pause_after,
        })
    }
}

/// Replaces `\r\n` with `\n`, as Packer does for scripts unless `binary` is set.
fn unix_line_endings(content: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut bytes = content.iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' && bytes.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_only_in_pairs() {
        assert_eq!(unix_line_endings(b"a\r\nb\rc\n".to_vec()), b"a\nb\rc\n");
    }
}
