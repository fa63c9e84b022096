//! Running the configured work as local processes: one process group per script, output streamed
//! as events, the whole group killed on cancellation.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use kiln_core::event::Level;
use kiln_core::process::{stream_output, GroupGuard};
use kiln_core::runner::BuildCtx;
use tokio::process::Command;

use crate::config::{Settings, Work};
use crate::TYPE_NAME;

/// Held while a script is written and while a process is spawned. A child forked while another
/// thread still has a script open for writing inherits that descriptor until it execs, and
/// executing the script then fails with "text file busy" (ETXTBSY); parallel builds hit this.
pub(crate) static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why running `shell-local` failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellLocalError {
    #[error("cannot write the temporary script for `{label}`")]
    WriteScript {
        label: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{program}` for {what}")]
    Spawn {
        program: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the output of {what}")]
    Output {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited with code {code}, expected {}", fmt_codes(valid))]
    ExitCode {
        what: String,
        code: i32,
        valid: Vec<i32>,
    },
    #[error("{what} was killed by signal {signal}")]
    Signal { what: String, signal: i32 },
    #[error("cancelled while running {what}")]
    Cancelled { what: String },
}

fn fmt_codes(codes: &[i32]) -> String {
    match codes {
        [one] => one.to_string(),
        many => format!(
            "one of {}",
            many.iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The local operating system under Packer's (Go's) name.
fn local_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// Runs the work in `settings` with `base_env` plus the user's variables.
pub(crate) async fn run(
    settings: &Settings,
    ctx: &BuildCtx,
    base_env: BTreeMap<String, String>,
) -> Result<(), ShellLocalError> {
    if !settings.only_on.is_empty() && !settings.only_on.iter().any(|os| os == local_os()) {
        ctx.events.message(
            Level::Info,
            format!(
                "skipping shell-local: `only_on` does not include `{}`",
                local_os()
            ),
        );
        return Ok(());
    }
    let mut env = base_env;
    env.extend(settings.env.clone());

    match &settings.work {
        Work::Inline { label, lines } => {
            let script = write_inline(settings, label, lines)?;
            let what = match *label {
                "command" => format!("command `{}`", lines.join("\n")),
                _ => "inline commands".to_string(),
            };
            run_script(settings, ctx, &env, &script, &what).await
        }
        Work::Scripts(paths) => {
            for path in paths {
                let what = format!("script `{}`", path.display());
                run_script(settings, ctx, &env, path, &what).await?;
            }
            Ok(())
        }
    }
}

/// Writes inline lines to an executable temporary script, removed when the result is dropped.
fn write_inline(
    settings: &Settings,
    label: &'static str,
    lines: &[String],
) -> Result<tempfile::TempPath, ShellLocalError> {
    let err = |source| ShellLocalError::WriteScript { label, source };
    let suffix = match settings.tempfile_extension.as_str() {
        "" => String::new(),
        ext => format!(".{ext}"),
    };
    let _no_spawn = spawn_lock();
    let mut file = tempfile::Builder::new()
        .prefix("kiln-shell-local-")
        .suffix(&suffix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempfile()
        .map_err(err)?;
    let mut text = format!("#!{}\n", settings.inline_shebang);
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(err)?;
    file.as_file().sync_all().map_err(err)?;
    // Closed here: a file still open for writing cannot be executed.
    Ok(file.into_temp_path())
}

/// `KEY='value' ...`, sorted by key, quoted for `sh` as Packer's `{{.Vars}}` is.
fn flatten_vars(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\'', r#"'"'"'"#)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces `{{.Vars}}` and `{{.Script}}` (spaces inside the braces allowed) in one argument.
fn render_arg(arg: &str, vars: &str, script: &Path) -> String {
    let mut out = arg.to_string();
    for (name, value) in [("Vars", vars), ("Script", &script.to_string_lossy())] {
        for pattern in [format!("{{{{.{name}}}}}"), format!("{{{{ .{name} }}}}")] {
            out = out.replace(&pattern, value);
        }
    }
    out
}

async fn run_script(
    settings: &Settings,
    ctx: &BuildCtx,
    env: &BTreeMap<String, String>,
    script: &Path,
    what: &str,
) -> Result<(), ShellLocalError> {
    let vars = flatten_vars(env);
    let argv: Vec<String> = settings
        .execute_command
        .iter()
        .map(|a| render_arg(a, &vars, script))
        .collect();
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let spawned = {
        let _no_writes = spawn_lock();
        command.spawn()
    };
    let mut child = spawned.map_err(|source| ShellLocalError::Spawn {
        program: argv[0].clone(),
        what: what.to_string(),
        source,
    })?;
    let mut guard = GroupGuard::new(child.id());

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let cancel = &ctx.cancel;
    tokio::select! {
        streamed = stream_output(&ctx.events, TYPE_NAME, stdout, stderr) => {
            streamed.map_err(|source| ShellLocalError::Output { what: what.to_string(), source })?;
        }
        _ = cancel.cancel.cancelled() => {
            guard.stop(&mut child, cancel).await;
            return Err(ShellLocalError::Cancelled { what: what.to_string() });
        }
    }
    let status = tokio::select! {
        status = child.wait() => status,
        _ = cancel.cancel.cancelled() => {
            guard.stop(&mut child, cancel).await;
            return Err(ShellLocalError::Cancelled { what: what.to_string() });
        }
    }
    .map_err(|source| ShellLocalError::Output {
        what: what.to_string(),
        source,
    })?;
    // The script is done; what it left running in the background is its own business.
    guard.disarm();

    match (status.code(), status.signal()) {
        (Some(code), _) if settings.valid_exit_codes.contains(&code) => Ok(()),
        (Some(code), _) => Err(ShellLocalError::ExitCode {
            what: what.to_string(),
            code,
            valid: settings.valid_exit_codes.clone(),
        }),
        (None, signal) => Err(ShellLocalError::Signal {
            what: what.to_string(),
            signal: signal.unwrap_or_default(),
        }),
    }
}
