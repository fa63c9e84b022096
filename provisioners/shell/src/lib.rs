//! The `shell` provisioner: uploads inline commands or scripts to the machine being built through
//! its communicator, runs them there and removes them, as Packer's `shell` does.

mod config;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_comm::ssh::shell_quote;
use kiln_comm::{
    CommError, Communicator, ExitStatus, RemoteCommand, Stream, UploadOptions, UploadSource,
};
use kiln_core::component::{OptionSpec, ProvisionCtx, Provisioner, ProvisionerKind, Registry};
use kiln_core::diag::Diagnostics;
use kiln_core::event::{EventSink, Level, OutputStream};
use kiln_core::plan::Config;
use tokio::time::Instant;

use config::{Script, Settings};

/// The type name in templates.
pub const TYPE_NAME: &str = "shell";

/// Adds the `shell` provisioner.
pub fn register(registry: &mut Registry) {
    registry.add_provisioner(Arc::new(ShellKind));
}

macro_rules! opt {
    ($name:literal, $ty:literal, $doc:literal) => {
        OptionSpec {
            name: $name,
            ty: $ty,
            required: false,
            doc: $doc,
        }
    };
}

const OPTIONS: &[OptionSpec] = &[
    opt!(
        "inline",
        "list(string)",
        "Commands written one per line to a script that is uploaded and run."
    ),
    opt!(
        "script",
        "string",
        "Path of a local script to upload and run."
    ),
    opt!(
        "scripts",
        "list(string)",
        "Paths of local scripts to upload and run, in order."
    ),
    opt!(
        "environment_vars",
        "list(string)",
        "Extra environment variables as `KEY=VALUE` strings."
    ),
    opt!(
        "env",
        "map(string)",
        "Extra environment variables as a map; wins over `environment_vars`."
    ),
    opt!(
        "execute_command",
        "string",
        "The command line that runs each script; `{{.Vars}}` and `{{.Path}}` are replaced."
    ),
    opt!(
        "inline_shebang",
        "string",
        "The interpreter line written at the top of the script made from `inline`."
    ),
    opt!(
        "remote_folder",
        "string",
        "Directory on the machine the script is uploaded to."
    ),
    opt!("remote_file", "string", "File name of the uploaded script."),
    opt!(
        "remote_path",
        "string",
        "Full path of the uploaded script; wins over `remote_folder` and `remote_file`."
    ),
    opt!(
        "skip_clean",
        "bool",
        "Leave the uploaded script on the machine."
    ),
    opt!(
        "expect_disconnect",
        "bool",
        "A lost connection while a script runs (a reboot) counts as success."
    ),
    opt!(
        "valid_exit_codes",
        "list(number)",
        "Exit codes that count as success."
    ),
    opt!(
        "start_retry_timeout",
        "duration",
        "How long to keep reconnecting when the machine is unreachable at the start."
    ),
    opt!(
        "pause_after",
        "duration",
        "Wait this long after the scripts have run."
    ),
    opt!(
        "binary",
        "bool",
        "Upload scripts unchanged instead of converting CRLF line endings to LF."
    ),
];

/// Why running `shell` failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("cannot upload {what} to `{path}`")]
    Upload {
        what: String,
        path: String,
        #[source]
        source: CommError,
    },
    #[error("cannot run {what} (`{command}`)")]
    Start {
        what: String,
        command: String,
        #[source]
        source: CommError,
    },
    #[error(
        "{what} (`{command}`) exited with code {code}, expected {}",
        fmt_codes(valid)
    )]
    ExitCode {
        what: String,
        command: String,
        code: i32,
        valid: Vec<i32>,
    },
    #[error("{what} (`{command}`) was killed by signal {signal}")]
    Signal {
        what: String,
        command: String,
        signal: i32,
    },
    #[error("the connection was lost while {what} (`{command}`) ran; set `expect_disconnect = true` if it reboots the machine")]
    Disconnected { what: String, command: String },
    #[error("cannot remove `{path}` after {what}")]
    Clean {
        what: String,
        path: String,
        #[source]
        source: CommError,
    },
    #[error("the machine was still unreachable after `start_retry_timeout` ({0:?})")]
    StartRetryTimeout(Duration),
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

struct ShellKind;

impl ProvisionerKind for ShellKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        Ok(Box::new(Shell(Settings::from_config(config)?)))
    }
}

struct Shell(Settings);

#[async_trait]
impl Provisioner for Shell {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        let settings = &self.0;
        let mut env = vec![
            (
                "PACKER_BUILD_NAME".to_string(),
                ctx.build.source_name.clone(),
            ),
            (
                "PACKER_BUILDER_TYPE".to_string(),
                ctx.build.source_type.clone(),
            ),
        ];
        env.extend(settings.env.clone());
        let vars = env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect::<Vec<_>>()
            .join(" ");
        let command = settings
            .execute_command
            .replace("{{.Vars}}", &vars)
            .replace("{{.Path}}", &shell_quote(&settings.remote_path));
        for script in &settings.scripts {
            run_script(settings, ctx, script, &command).await?;
        }
        if let Some(pause) = settings.pause_after {
            ctx.build.events.message(
                Level::Info,
                format!("pausing {pause:?} after the shell scripts"),
            );
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}

/// Uploads `script`, runs it with `command` and removes it.
async fn run_script(
    settings: &Settings,
    ctx: &ProvisionCtx<'_>,
    script: &Script,
    command: &str,
) -> Result<(), ShellError> {
    let comm = ctx.comm;
    let path = &settings.remote_path;
    let what = &script.what;
    let upload = UploadOptions {
        mode: Some(0o755),
        owner: None,
    };
    with_reconnect(comm, settings.start_retry_timeout, || {
        comm.upload(UploadSource::Bytes(script.content.clone()), path, &upload)
    })
    .await?
    .map_err(|source| ShellError::Upload {
        what: what.clone(),
        path: path.clone(),
        source,
    })?;

    let cmd = RemoteCommand {
        command: command.to_string(),
        ..RemoteCommand::default()
    };
    let mut sink = EventOutput(&ctx.build.events);
    let status = match comm.exec(&cmd, &mut sink).await {
        Ok(status) => status,
        Err(CommError::Disconnected) => ExitStatus::Disconnected,
        Err(source) => {
            return Err(ShellError::Start {
                what: what.clone(),
                command: command.to_string(),
                source,
            })
        }
    };
    let failure = match status {
        ExitStatus::Code(code) if settings.valid_exit_codes.contains(&code) => None,
        ExitStatus::Code(code) => Some(ShellError::ExitCode {
            what: what.clone(),
            command: command.to_string(),
            code,
            valid: settings.valid_exit_codes.clone(),
        }),
        ExitStatus::Signal(signal) => Some(ShellError::Signal {
            what: what.clone(),
            command: command.to_string(),
            signal,
        }),
        ExitStatus::Disconnected => Some(ShellError::Disconnected {
            what: what.clone(),
            command: command.to_string(),
        }),
    };
    if let Some(failure) = failure {
        // A machine going down kills its processes before the connection drops, and the
        // server may report their end first: then only the lost connection tells.
        let expected = settings.expect_disconnect
            && (matches!(failure, ShellError::Disconnected { .. }) || connection_lost(comm).await);
        if expected {
            // The next use reconnects. The script stays where it is: a rebooted machine
            // usually clears its temporary directory anyway.
            ctx.build.events.message(
                Level::Info,
                format!("the connection was lost while {what} ran, as expected"),
            );
            return Ok(());
        }
        // Packer leaves the script behind when it fails; the machine may outlive the build (a
        // `null` builder's host), so remove it while the connection still answers. The
        // script's failure is the error worth reporting, not a failed clean-up.
        if !settings.skip_clean && !matches!(failure, ShellError::Disconnected { .. }) {
            remove_script(comm, path, &mut sink).await.ok();
        }
        return Err(failure);
    }

    if !settings.skip_clean {
        remove_script(comm, path, &mut sink)
            .await
            .map_err(|source| ShellError::Clean {
                what: what.clone(),
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Removes the uploaded script at `path`.
async fn remove_script(
    comm: &dyn Communicator,
    path: &str,
    sink: &mut EventOutput<'_>,
) -> Result<(), CommError> {
    let rm = RemoteCommand {
        command: format!("rm -f {}", shell_quote(path)),
        ..RemoteCommand::default()
    };
    match comm.exec(&rm, sink).await? {
        ExitStatus::Code(0) => Ok(()),
        other => Err(CommError::Remote(format!("`rm` ended with {other:?}"))),
    }
}

/// How long [`connection_lost`] waits for an answer from the machine.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Whether the connection is gone: a trivial command cannot run, or gets no answer.
async fn connection_lost(comm: &dyn Communicator) -> bool {
    let probe = RemoteCommand {
        command: "true".to_string(),
        ..RemoteCommand::default()
    };
    let mut ignore = |_: Stream, _: &str| {};
    match tokio::time::timeout(PROBE_LIMIT, comm.exec(&probe, &mut ignore)).await {
        Err(_) => true,
        Ok(result) => matches!(
            result,
            Err(CommError::Disconnected) | Ok(ExitStatus::Disconnected)
        ),
    }
}

/// Runs `op`; while it fails because the connection is lost (after an expected reboot, or a
/// machine still coming up), reconnects and tries again until `limit` has passed. The outer
/// error says the limit ran out; the inner one is `op`'s own failure.
async fn with_reconnect<T, F, Fut>(
    comm: &dyn Communicator,
    limit: Duration,
    mut op: F,
) -> Result<Result<T, CommError>, ShellError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CommError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match op().await {
            Err(CommError::Disconnected) => {}
            other => return Ok(other),
        }
        match tokio::time::timeout_at(deadline, comm.reconnect()).await {
            Err(_) => return Err(ShellError::StartRetryTimeout(limit)),
            Ok(Err(e)) => return Ok(Err(e)),
            Ok(Ok(())) => {}
        }
        if Instant::now() >= deadline {
            return Err(ShellError::StartRetryTimeout(limit));
        }
    }
}

/// Hands output lines to the build's events, from source `shell`.
struct EventOutput<'a>(&'a EventSink);

impl kiln_comm::OutputSink for EventOutput<'_> {
    fn line(&mut self, stream: Stream, line: &str) {
        let stream = match stream {
            Stream::Stdout => OutputStream::Stdout,
            Stream::Stderr => OutputStream::Stderr,
        };
        self.0.output(TYPE_NAME, stream, line);
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    const KIND: ShellKind = ShellKind;

    fn config(attrs: serde_json::Value) -> Config {
        Config::from_json(TYPE_NAME, attrs)
    }

    fn errors(attrs: serde_json::Value) -> String {
        match KIND.configure(&config(attrs)) {
            Ok(_) => panic!("configure accepted an invalid config"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn invalid_configurations_are_explained() {
        let e = errors(json!({}));
        assert!(
            e.contains("needs one of `inline`, `script` or `scripts`"),
            "{e}"
        );
        let e = errors(json!({ "inline": ["true"], "script": "x.sh" }));
        assert!(e.contains("but `inline` and `script` are set"), "{e}");
        let e = errors(json!({ "script": "/nonexistent/x.sh" }));
        assert!(e.contains("cannot read script `/nonexistent/x.sh`"), "{e}");
        let e = errors(json!({ "scripts": [] }));
        assert!(e.contains("`scripts` is empty"), "{e}");
        let e = errors(json!({ "inline": ["true"], "environment_vars": ["NOEQUALS"] }));
        assert!(
            e.contains("`NOEQUALS` is not of the form `KEY=VALUE`"),
            "{e}"
        );
        let e = errors(json!({ "inline": ["true"], "valid_exit_codes": [] }));
        assert!(e.contains("`valid_exit_codes` is empty"), "{e}");
        let e = errors(json!({ "inline": ["true"], "start_retry_timeout": "soon" }));
        assert!(e.contains("invalid duration `soon`"), "{e}");
    }

    #[test]
    fn remote_path_defaults_to_a_random_script_in_tmp() {
        let settings = Settings::from_config(&config(json!({ "inline": ["true"] }))).unwrap();
        assert!(
            settings.remote_path.starts_with("/tmp/script_"),
            "{}",
            settings.remote_path
        );
        assert!(settings.remote_path.ends_with(".sh"));
        let settings = Settings::from_config(&config(json!({
            "inline": ["true"], "remote_folder": "/var/tmp/", "remote_file": "run.sh",
        })))
        .unwrap();
        assert_eq!(settings.remote_path, "/var/tmp/run.sh");
        let settings = Settings::from_config(&config(json!({
            "inline": ["a", "b"], "remote_folder": "/x", "remote_path": "/y/z.sh",
            "inline_shebang": "/bin/bash -eu",
        })))
        .unwrap();
        assert_eq!(settings.remote_path, "/y/z.sh");
        assert_eq!(settings.scripts[0].content, b"#!/bin/bash -eu\na\nb\n");
    }
}
