//! `kiln build`: plans a template, runs its builds, renders their events, and handles
//! interrupts (first: cancel and clean up; second: hurry; third: abandon and exit).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_core::artifact::Artifact;
use kiln_core::component::Registry;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::plan::BuildPlan;
use kiln_core::runner::{run_plan, AskAnswer, Asker, Cancel, RunOptions, RunSummary};
use uuid::Uuid;

use crate::cli::{BuildArgs, OnErrorArg};
use crate::commands::{load_options, load_plan};
use crate::components;
use crate::exit::{CliError, Status};
use crate::render::{color_enabled, human, json::Json, Renderer};
use crate::signals::Interrupts;

pub fn run(args: BuildArgs) -> Result<Status, CliError> {
    let registry = components::registry();
    let opts = load_options(&args.path, &args.vars.ordered);
    let plan = load_plan(&opts, Some(&args.select), &registry, args.color.color)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(e.into()))?;
    let status = runtime.block_on(run_builds(args, plan, registry));
    // A blocked `-on-error=ask` read must not keep the process alive.
    runtime.shutdown_background();
    status
}

/// Something the builds left in place, as reported by a `Leftover` event.
struct SeenLeftover {
    build: Option<String>,
    what: String,
    how_to_reach: Option<String>,
}

async fn run_builds(
    args: BuildArgs,
    plan: BuildPlan,
    registry: Registry,
) -> Result<Status, CliError> {
    let mut renderer: Box<dyn Renderer> = if args.json || args.machine_readable {
        Box::new(Json::new(std::io::stdout()))
    } else {
        let stdout = std::io::stdout();
        let opts = human::Options {
            color: color_enabled(args.color.color, stdout.is_terminal()),
            timestamps: args.timestamp_ui,
            progress_bars: std::io::stderr().is_terminal(),
        };
        Box::new(human::Human::new(stdout, opts))
    };
    let mut interrupts = Interrupts::install().map_err(|e| CliError::Internal(e.into()))?;
    let redactor = Redactor::new(plan.sensitive_values.clone());
    let (sink, mut rx) = EventSink::channel(Uuid::new_v4(), redactor);
    // Kept to read the redactor later: components may add secrets learned at run time.
    let events = sink.clone();
    let cancel = Cancel::new();
    let asker = (args.on_error == OnErrorArg::Ask)
        .then(|| Arc::new(StdinAsker::new(sink.clone())) as Arc<dyn Asker>);
    let opts = RunOptions {
        parallel_builds: args.parallel_builds,
        on_error: args.on_error.into(),
        asker,
        force: args.force,
        cancel: cancel.clone(),
    };
    let mut run = tokio::spawn(async move { run_plan(&plan, &registry, opts, sink).await });

    let mut leftovers = Vec::new();
    let mut show = |ev: kiln_core::event::Event, renderer: &mut Box<dyn Renderer>| {
        if let EventKind::Leftover { what, how_to_reach } = &ev.kind {
            leftovers.push(SeenLeftover {
                build: ev.build.clone(),
                what: what.clone(),
                how_to_reach: how_to_reach.clone(),
            });
        }
        renderer.event(&ev);
    };
    let summary = loop {
        tokio::select! {
            biased;
            Some(ev) = rx.recv() => show(ev, &mut renderer),
            n = interrupts.next() => match n {
                1 => {
                    cancel.cancel.cancel();
                    eprintln!(
                        "interrupt received: cancelling builds and cleaning up \
                         (press Ctrl-C again to hurry)"
                    );
                }
                2 => {
                    cancel.hurry.cancel();
                    eprintln!(
                        "second interrupt: hurrying cleanup (press Ctrl-C again to abandon it)"
                    );
                }
                _ => {
                    // Events already sent may hold more leftovers.
                    while let Ok(ev) = rx.try_recv() {
                        show(ev, &mut renderer);
                    }
                    abandon(&leftovers);
                }
            },
            res = &mut run => {
                let summary = res.map_err(|e| {
                    if e.is_panic() {
                        // The panic hook has reported it.
                        CliError::Reported(Status::Failed)
                    } else {
                        CliError::Internal(e.into())
                    }
                })?;
                while let Ok(ev) = rx.try_recv() {
                    show(ev, &mut renderer);
                }
                break summary;
            }
        }
    };
    let redactor = events.redactor().clone();
    renderer.finish(&redact_summary(&redactor, summary.clone()));
    Ok(if interrupts.count() > 0 || summary.cancelled {
        Status::Interrupted
    } else if summary.ok() {
        Status::Success
    } else {
        Status::Failed
    })
}

/// The third interrupt: say what may be left behind and exit at once.
fn abandon(leftovers: &[SeenLeftover]) -> ! {
    let _ = std::io::stderr().write_all(abandon_message(leftovers).as_bytes());
    std::process::exit(Status::Interrupted.code());
}

fn abandon_message(leftovers: &[SeenLeftover]) -> String {
    let mut text = String::from(
        "warning: third interrupt: cleanup abandoned; what the builds created may be left behind\n",
    );
    if leftovers.is_empty() {
        text.push_str("warning: no leftovers had been reported yet\n");
    }
    for l in leftovers {
        let build = l.build.as_deref().unwrap_or("run");
        text.push_str(&match &l.how_to_reach {
            Some(how) => format!("  {build}: {} (reach it with: {how})\n", l.what),
            None => format!("  {build}: {}\n", l.what),
        });
    }
    text
}

/// The outcome with sensitive values replaced, for rendering: errors and artifacts come from
/// components and have not passed through the event sink.
fn redact_summary(r: &Redactor, mut s: RunSummary) -> RunSummary {
    if r.is_empty() {
        return s;
    }
    for b in &mut s.builds {
        for e in &mut b.error {
            *e = r.redact(e);
        }
        for a in &mut b.artifacts {
            redact_artifact(r, a);
        }
    }
    s
}

fn redact_artifact(r: &Redactor, a: &mut Artifact) {
    a.id = r.redact(&a.id);
    for f in &mut a.files {
        f.path = PathBuf::from(r.redact(&f.path.to_string_lossy()));
    }
    if let Ok(text) = serde_json::to_string(&a.data) {
        let redacted = r.redact(&text);
        if redacted != text {
            a.data = serde_json::from_str(&redacted).unwrap_or_default();
        }
    }
}

/// `-on-error=ask`: asks on the terminal, one build at a time.
struct StdinAsker {
    /// For its redactor.
    events: EventSink,
    one_at_a_time: Mutex<()>,
}

impl StdinAsker {
    fn new(events: EventSink) -> Self {
        StdinAsker {
            events,
            one_at_a_time: Mutex::new(()),
        }
    }
}

impl Asker for StdinAsker {
    fn ask(&self, build: &str, error: &str) -> AskAnswer {
        let _turn = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let error = self.events.redactor().redact(error);
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            eprintln!("==> {build}: build failed: {error}");
            eprintln!("==> {build}: -on-error=ask needs a terminal on stdin; cleaning up");
            return AskAnswer::Cleanup;
        }
        eprintln!("==> {build}: build failed: {error}");
        loop {
            eprint!(
                "==> {build}: [c]lean up and stop, [a]bort without cleanup, or [r]etry the step? "
            );
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => return AskAnswer::Cleanup,
                Ok(_) => match line.trim().to_ascii_lowercase().as_str() {
                    "c" | "cleanup" => return AskAnswer::Cleanup,
                    "a" | "abort" => return AskAnswer::Abort,
                    "r" | "retry" => return AskAnswer::Retry,
                    _ => eprintln!("please answer `c`, `a` or `r`"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::artifact::ArtifactFile;
    use kiln_core::runner::BuildOutcome;

    #[test]
    fn abandoning_lists_leftovers() {
        let text = abandon_message(&[
            SeenLeftover {
                build: Some("qemu.a".into()),
                what: "VM `kiln-1` (pid 42)".into(),
                how_to_reach: Some("ssh -p 2222 root@127.0.0.1".into()),
            },
            SeenLeftover {
                build: None,
                what: "temp dir /tmp/x".into(),
                how_to_reach: None,
            },
        ]);
        assert_eq!(
            text,
            "warning: third interrupt: cleanup abandoned; what the builds created may be left behind\n\
             \x20 qemu.a: VM `kiln-1` (pid 42) (reach it with: ssh -p 2222 root@127.0.0.1)\n\
             \x20 run: temp dir /tmp/x\n"
        );
        assert!(abandon_message(&[]).contains("no leftovers had been reported yet"));
    }

    #[test]
    fn summary_is_redacted() {
        let r = Redactor::new(["hunter22secret".to_string()]);
        let s = RunSummary {
            cancelled: false,
            builds: vec![BuildOutcome {
                name: "null.a".into(),
                ok: false,
                cancelled: false,
                error: vec!["password hunter22secret rejected".into()],
                artifacts: vec![Artifact {
                    builder_type: "null".into(),
                    id: "id-hunter22secret".into(),
                    files: vec![ArtifactFile {
                        path: "/tmp/hunter22secret.img".into(),
                        size: 1,
                        sha256: "00".into(),
                    }],
                    data: serde_json::from_str(r#"{"k":"hunter22secret"}"#).unwrap(),
                }],
            }],
        };
        let out = format!("{:?}", redact_summary(&r, s));
        assert!(!out.contains("hunter22secret"), "{out}");
        assert!(out.contains("<sensitive>"));
    }
}
