//! Tests of the build runner: the cleanup-stack property of `run_steps`, and `run_plan` with
//! builder, provisioner and post-processor kinds defined here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_comm::{Communicator, NoneCommunicator};
use kiln_core::artifact::Artifact;
use kiln_core::component::{
    BuilderKind, ConnInfo, OptionSpec, PostProcessed, PostProcessor, PostProcessorKind,
    ProvisionCtx, ProvisionHook, Provisioner, ProvisionerKind, Registry,
};
use kiln_core::diag::{Diagnostics, FileId, SourceMap, Span};
use kiln_core::event::{Event, EventKind, EventSink, Redactor};
use kiln_core::plan::{
    Build, BuildPlan, ComponentSpec, Config, ConfigBody, PostProcessorSpec, ProvisionerSpec,
    RawAttr, Scope,
};
use kiln_core::runner::{
    run_plan, run_steps, AskAnswer, Asker, BuildCtx, BuildError, Cancel, CleanupCtx, Leftover,
    OnError, RunOptions, RunSummary, Step,
};
use kiln_core::BoxError;
use proptest::prelude::*;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev.kind);
    }
    out
}

fn build_ctx(events: EventSink, on_error: OnError, cancel: Cancel) -> BuildCtx {
    BuildCtx {
        run_id: events.run_id(),
        build_name: "test.one".to_string(),
        source_type: "test".to_string(),
        source_name: "one".to_string(),
        events,
        cancel,
        on_error,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

// ---------------------------------------------------------------------------------------------
// run_steps: the cleanup-stack property
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `run` returns an error before acquiring its resource.
    ErrorBeforeAcquire,
    /// `run` acquires its resource, then returns an error.
    ErrorAfterAcquire,
    /// `run` acquires its resource, then awaits while the token is cancelled.
    Cancel,
    /// Like `Cancel`, but the step `stops_on_cancel`: it sees the cancellation and returns.
    CancelStopping,
    /// The step `stops_on_cancel` but never stops: the runner drops it after its deadline (or
    /// its grace, once hurried).
    CancelStuck,
}

/// How a cleanup goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CleanupFault {
    /// It returns an error.
    Fails,
    /// It never returns: the cleanup deadline ends it.
    Hangs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Acquire(usize),
    Release(usize),
    CleanupCalled(usize),
}

struct Ledger {
    log: Arc<Mutex<Vec<Act>>>,
    held: Vec<usize>,
    /// When the first cleanup began (virtual time).
    first_cleanup: Option<tokio::time::Instant>,
}

struct ResourceStep {
    index: usize,
    name: String,
    fault: Option<Fault>,
    cleanup_fault: Option<CleanupFault>,
    acquired: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Step<Ledger> for ResourceStep {
    fn name(&self) -> &str {
        &self.name
    }

    fn stops_on_cancel(&self) -> bool {
        matches!(self.fault, Some(Fault::CancelStopping | Fault::CancelStuck))
    }

    async fn run(&self, state: &mut Ledger, ctx: &BuildCtx) -> Result<(), BoxError> {
        if self.fault == Some(Fault::ErrorBeforeAcquire) {
            return Err("no resource available".into());
        }
        state.held.push(self.index);
        state.log.lock().unwrap().push(Act::Acquire(self.index));
        match self.fault {
            Some(Fault::ErrorAfterAcquire) => Err("failed after acquiring".into()),
            Some(Fault::Cancel | Fault::CancelStuck) => {
                self.acquired.notify_one();
                std::future::pending().await
            }
            Some(Fault::CancelStopping) => {
                self.acquired.notify_one();
                ctx.cancel.cancel.cancelled().await;
                tokio::task::yield_now().await;
                Err("stopped on cancel".into())
            }
            _ => {
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }

    async fn cleanup(&self, state: &mut Ledger, _ctx: &CleanupCtx<'_>) -> Result<(), BoxError> {
        state
            .first_cleanup
            .get_or_insert_with(tokio::time::Instant::now);
        state
            .log
            .lock()
            .unwrap()
            .push(Act::CleanupCalled(self.index));
        tokio::task::yield_now().await;
        match self.cleanup_fault {
            Some(CleanupFault::Fails) => return Err("resource busy".into()),
            Some(CleanupFault::Hangs) => std::future::pending().await,
            None => {}
        }
        if let Some(pos) = state.held.iter().position(|&i| i == self.index) {
            state.held.remove(pos);
            state.log.lock().unwrap().push(Act::Release(self.index));
        }
        Ok(())
    }

    fn leftovers(&self, state: &Ledger) -> Vec<Leftover> {
        state
            .held
            .iter()
            .filter(|&&i| i == self.index)
            .map(|i| Leftover {
                what: format!("resource {i}"),
                how_to_reach: None,
            })
            .collect()
    }
}

struct Case {
    steps: usize,
    fault: Option<(usize, Fault)>,
    failing_cleanup: Option<(usize, CleanupFault)>,
    on_error: OnError,
    /// Hurry (a second Ctrl-C) right after cancelling.
    hurry: bool,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps, fault {:?}, failing cleanup {:?}, {:?}, hurry {}",
            self.steps, self.fault, self.failing_cleanup, self.on_error, self.hurry
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..8).prop_flat_map(|steps| {
        let fault = prop_oneof![
            Just(None),
            (
                0..steps,
                prop_oneof![
                    Just(Fault::ErrorBeforeAcquire),
                    Just(Fault::ErrorAfterAcquire),
                    Just(Fault::Cancel),
                    Just(Fault::CancelStopping),
                    Just(Fault::CancelStuck)
                ]
            )
                .prop_map(Some),
        ];
        let on_error = prop_oneof![Just(OnError::Cleanup), Just(OnError::Abort)];
        let cleanup_fault = prop_oneof![Just(CleanupFault::Fails), Just(CleanupFault::Hangs)];
        (
            fault,
            proptest::option::of((0..steps, cleanup_fault)),
            on_error,
            any::<bool>(),
        )
            .prop_map(move |(fault, failing_cleanup, on_error, hurry)| Case {
                steps,
                fault,
                failing_cleanup,
                on_error,
                hurry,
            })
    })
}

/// Runs one case; returns the ledger's log, the result, the events and how long the steps took
/// (until the last step ended, before the cleanups) in virtual time.
fn run_case(case: &Case) -> (Vec<Act>, Result<(), BuildError>, Vec<EventKind>, Duration) {
    // Virtual time: the stop and cleanup deadlines pass as soon as nothing else can run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (events, mut rx) = EventSink::channel(Uuid::new_v4(), Redactor::default());
        let cancel = Cancel::new();
        let ctx = build_ctx(events, case.on_error, cancel.clone());
        let acquired = Arc::new(tokio::sync::Notify::new());
        let steps: Vec<ResourceStep> = (0..case.steps)
            .map(|index| ResourceStep {
                index,
                name: format!("step {index}"),
                fault: case.fault.filter(|(at, _)| *at == index).map(|(_, f)| f),
                cleanup_fault: case
                    .failing_cleanup
                    .filter(|(at, _)| *at == index)
                    .map(|(_, f)| f),
                acquired: acquired.clone(),
            })
            .collect();
        let canceller = tokio::spawn({
            let acquired = acquired.clone();
            let hurry = case.hurry;
            async move {
                acquired.notified().await;
                cancel.cancel.cancel();
                if hurry {
                    cancel.hurry.cancel();
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut ledger = Ledger {
            log: log.clone(),
            held: Vec::new(),
            first_cleanup: None,
        };
        let dyn_steps: Vec<&dyn Step<Ledger>> =
            steps.iter().map(|s| s as &dyn Step<Ledger>).collect();
        let started = tokio::time::Instant::now();
        let result = run_steps(&dyn_steps, &mut ledger, &ctx).await;
        canceller.abort();
        let log = log.lock().unwrap().clone();
        let events = drain(&mut rx);
        let ended = ledger
            .first_cleanup
            .unwrap_or_else(tokio::time::Instant::now);
        (log, result, events, ended - started)
    })
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let (log, result, events, took) = run_case(case);
    let failing = case.failing_cleanup.map(|(at, _)| at);
    // A step that stops on cancel but never does is waited for until its deadline, or for a
    // short grace once hurried; then dropped (and still cleaned up).
    if let Some((_, Fault::CancelStuck)) = case.fault {
        let (at_least, below) = if case.hurry {
            (Duration::from_secs(2), Duration::from_secs(3))
        } else {
            (Duration::from_secs(30), Duration::from_secs(31))
        };
        prop_assert!(took >= at_least && took < below, "stuck step ran {took:?}");
    }
    let started: Vec<usize> = match case.fault {
        Some((at, _)) => (0..=at).collect(),
        None => (0..case.steps).collect(),
    };
    let acquired: Vec<usize> = log
        .iter()
        .filter_map(|a| match a {
            Act::Acquire(i) => Some(*i),
            _ => None,
        })
        .collect();
    let released: Vec<usize> = log
        .iter()
        .filter_map(|a| match a {
            Act::Release(i) => Some(*i),
            _ => None,
        })
        .collect();
    let cleaned: Vec<usize> = log
        .iter()
        .filter_map(|a| match a {
            Act::CleanupCalled(i) => Some(*i),
            _ => None,
        })
        .collect();
    let leftover_events: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Leftover { what, .. } => Some(what.clone()),
            _ => None,
        })
        .collect();
    let expected_acquired: Vec<usize> = started
        .iter()
        .copied()
        .filter(|&i| case.fault != Some((i, Fault::ErrorBeforeAcquire)))
        .collect();
    prop_assert_eq!(&acquired, &expected_acquired);

    let aborted = case.fault.is_some() && case.on_error == OnError::Abort;
    if aborted {
        prop_assert!(
            cleaned.is_empty(),
            "aborted build ran cleanups: {cleaned:?}"
        );
        prop_assert!(released.is_empty());
        let expected: Vec<String> = acquired.iter().map(|i| format!("resource {i}")).collect();
        prop_assert_eq!(&leftover_events, &expected);
    } else {
        // Every started step is cleaned once, in reverse; never a step that did not start.
        let reversed: Vec<usize> = started.iter().rev().copied().collect();
        prop_assert_eq!(&cleaned, &reversed);
        // Every acquired resource is released exactly once, in reverse, except where the
        // cleanup failed: that one is reported as left behind.
        let expected_released: Vec<usize> = acquired
            .iter()
            .rev()
            .copied()
            .filter(|&i| failing != Some(i))
            .collect();
        prop_assert_eq!(&released, &expected_released);
        let expected_leftovers: Vec<String> = acquired
            .iter()
            .filter(|&&i| failing == Some(i))
            .map(|i| format!("resource {i}"))
            .collect();
        prop_assert_eq!(&leftover_events, &expected_leftovers);
    }

    let failed_cleanup = !aborted && failing.is_some_and(|i| started.contains(&i));
    let cleanup_failures: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::CleanupFinished {
                ok: false, error, ..
            } => Some(error.clone().unwrap_or_default()),
            _ => None,
        })
        .collect();
    prop_assert_eq!(cleanup_failures.len(), usize::from(failed_cleanup));
    if let (true, Some((_, CleanupFault::Hangs))) = (failed_cleanup, case.failing_cleanup) {
        prop_assert!(
            cleanup_failures[0].starts_with("did not finish within"),
            "{:?}",
            cleanup_failures
        );
    }
    match (case.fault, &result) {
        (None, Ok(())) => prop_assert!(!failed_cleanup),
        (None, Err(BuildError::Cleanup { left_behind, .. })) => {
            prop_assert!(failed_cleanup);
            prop_assert_eq!(left_behind.len(), 1, "{:?}", left_behind);
        }
        (
            Some((_, Fault::Cancel | Fault::CancelStopping | Fault::CancelStuck)),
            Err(BuildError::Cancelled),
        ) => {}
        (Some((at, _)), Err(BuildError::Step { step, .. })) => {
            prop_assert_eq!(step, &format!("step {at}"))
        }
        (fault, result) => prop_assert!(false, "fault {fault:?} gave {result:?}"),
    }
    if case.fault.is_some() && failed_cleanup {
        // The build's error stays primary; the cleanup failure is reported as well.
        let reported = events.iter().any(
            |e| matches!(e, EventKind::Message { text, .. } if text.contains("cleanup failed")),
        );
        prop_assert!(reported, "cleanup failure not reported: {:?}", events);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_acquired_resource_is_released_once_in_reverse(case in case()) {
        check_case(&case)?;
    }
}

#[test]
fn success_runs_every_cleanup_in_reverse() {
    let case = Case {
        steps: 3,
        fault: None,
        failing_cleanup: None,
        on_error: OnError::Abort,
        hurry: false,
    };
    let (log, result, _, _) = run_case(&case);
    assert!(result.is_ok());
    assert_eq!(
        log.iter()
            .filter(|a| matches!(a, Act::Release(_)))
            .collect::<Vec<_>>(),
        [&Act::Release(2), &Act::Release(1), &Act::Release(0)]
    );
}

// ---------------------------------------------------------------------------------------------
// run_plan with test-only component kinds
// ---------------------------------------------------------------------------------------------

/// What the test components did, in order.
#[derive(Default)]
struct Record {
    /// (build source name, what, when)
    marks: Mutex<Vec<(String, String, Instant)>>,
    /// Attempts per provisioner label.
    attempts: Mutex<HashMap<String, u32>>,
}

impl Record {
    fn mark(&self, build: &str, what: &str) {
        self.marks
            .lock()
            .unwrap()
            .push((build.to_string(), what.to_string(), Instant::now()));
    }

    fn when(&self, build: &str, what: &str) -> Instant {
        self.marks
            .lock()
            .unwrap()
            .iter()
            .find(|(b, w, _)| b == build && w == what)
            .unwrap_or_else(|| panic!("no mark {what} for {build}"))
            .2
    }

    fn whats(&self) -> Vec<String> {
        self.marks
            .lock()
            .unwrap()
            .iter()
            .map(|(_, w, _)| w.clone())
            .collect()
    }
}

const NO_OPTIONS: &[OptionSpec] = &[];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBuilderOptions {
    dir: PathBuf,
    #[serde(default)]
    barrier: bool,
}

struct TestBuilderKind {
    record: Arc<Record>,
    barrier: Arc<tokio::sync::Barrier>,
}

struct TestBuilder {
    opts: TestBuilderOptions,
    record: Arc<Record>,
    barrier: Arc<tokio::sync::Barrier>,
}

impl BuilderKind for TestBuilderKind {
    fn type_name(&self) -> &'static str {
        "test"
    }
    fn options(&self) -> &'static [OptionSpec] {
        NO_OPTIONS
    }
    fn configure(
        &self,
        config: &Config,
    ) -> Result<Box<dyn kiln_core::component::Builder>, Diagnostics> {
        Ok(Box::new(TestBuilder {
            opts: config.decode()?,
            record: self.record.clone(),
            barrier: self.barrier.clone(),
        }))
    }
}

#[derive(Default)]
struct WorkState {
    work_file: Option<PathBuf>,
}

struct CreateWorkFile<'a>(&'a Path);

#[async_trait]
impl Step<WorkState> for CreateWorkFile<'_> {
    fn name(&self) -> &str {
        "create work file"
    }
    async fn run(&self, state: &mut WorkState, ctx: &BuildCtx) -> Result<(), BoxError> {
        let path = self.0.join(format!("{}.work", ctx.source_name));
        state.work_file = Some(path.clone());
        tokio::fs::write(&path, b"work").await?;
        Ok(())
    }
    async fn cleanup(&self, state: &mut WorkState, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        if let Some(path) = state.work_file.take() {
            tokio::fs::remove_file(path).await?;
        }
        Ok(())
    }
    fn leftovers(&self, state: &WorkState) -> Vec<Leftover> {
        state
            .work_file
            .iter()
            .map(|p| Leftover {
                what: format!("file {}", p.display()),
                how_to_reach: None,
            })
            .collect()
    }
}

struct Provision<'a>(&'a dyn ProvisionHook);

#[async_trait]
impl Step<WorkState> for Provision<'_> {
    fn name(&self) -> &str {
        "provision"
    }
    async fn run(&self, _: &mut WorkState, ctx: &BuildCtx) -> Result<(), BoxError> {
        let conn = ConnInfo {
            conn_type: "none".to_string(),
            password: Some(kiln_core::sensitive::Sensitive::new(
                "runtime-pw-123".into(),
            )),
            ..ConnInfo::default()
        };
        let comm: &dyn Communicator = &NoneCommunicator;
        self.0.provision(ctx, &conn, comm).await?;
        Ok(())
    }
}

#[async_trait]
impl kiln_core::component::Builder for TestBuilder {
    async fn run(&self, ctx: &BuildCtx, hook: &dyn ProvisionHook) -> Result<Artifact, BuildError> {
        self.record.mark(&ctx.source_name, "build start");
        if self.opts.barrier {
            self.barrier.wait().await;
        }
        let mut state = WorkState::default();
        let create = CreateWorkFile(&self.opts.dir);
        let provision = Provision(hook);
        let result = run_steps(&[&create, &provision], &mut state, ctx).await;
        self.record.mark(&ctx.source_name, "build end");
        result?;
        Ok(Artifact {
            builder_type: "test".to_string(),
            id: format!("{}-artifact", ctx.source_name),
            ..Artifact::default()
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestProvisionerOptions {
    label: String,
    /// Fail this many attempts before succeeding.
    #[serde(default)]
    fail_times: u32,
    /// Never finish (until timed out or cancelled).
    #[serde(default)]
    hang: bool,
}

struct TestProvisionerKind {
    record: Arc<Record>,
}

struct TestProvisioner {
    opts: TestProvisionerOptions,
    record: Arc<Record>,
}

impl ProvisionerKind for TestProvisionerKind {
    fn type_name(&self) -> &'static str {
        "test-prov"
    }
    fn options(&self) -> &'static [OptionSpec] {
        NO_OPTIONS
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        Ok(Box::new(TestProvisioner {
            opts: config.decode()?,
            record: self.record.clone(),
        }))
    }
}

#[async_trait]
impl Provisioner for TestProvisioner {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), BoxError> {
        let label = &self.opts.label;
        let attempt = {
            let mut attempts = self.record.attempts.lock().unwrap();
            let n = attempts.entry(label.clone()).or_default();
            *n += 1;
            *n
        };
        self.record.mark(
            &ctx.build.source_name,
            &format!("{label} attempt {attempt}"),
        );
        if self.opts.hang {
            std::future::pending::<()>().await;
        }
        if attempt <= self.opts.fail_times {
            return Err(format!(
                "attempt {attempt} of {label} failed; password {}",
                ctx.conn.password.as_ref().unwrap().expose()
            )
            .into());
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPostProcessorOptions {
    suffix: String,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    fail: bool,
}

struct TestPostProcessorKind;

impl PostProcessorKind for TestPostProcessorKind {
    fn type_name(&self) -> &'static str {
        "test-pp"
    }
    fn options(&self) -> &'static [OptionSpec] {
        NO_OPTIONS
    }
    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        Ok(Box::new(TestPostProcessor(config.decode()?)))
    }
}

struct TestPostProcessor(TestPostProcessorOptions);

#[async_trait]
impl PostProcessor for TestPostProcessor {
    async fn process(&self, _: &BuildCtx, input: Artifact) -> Result<PostProcessed, BoxError> {
        if self.0.fail {
            return Err("compression failed".into());
        }
        Ok(PostProcessed {
            artifact: Artifact {
                builder_type: "test-pp".to_string(),
                id: format!("{}{}", input.id, self.0.suffix),
                ..Artifact::default()
            },
            keep_input: self.0.keep,
        })
    }
}

/// The fake template: line 2, column 3 is where every component "is".
const TEMPLATE: &str = "build {\n  provisioner \"test-prov\" {}\n}\n";
const SPAN: Span = Span {
    file: FileId(0),
    start: 10,
    end: 20,
};

fn body(attrs: Vec<(&str, hcl::Expression)>) -> ConfigBody {
    ConfigBody {
        attrs: attrs
            .into_iter()
            .map(|(key, expr)| RawAttr {
                key: key.to_string(),
                key_span: SPAN,
                expr,
                span: SPAN,
            })
            .collect(),
        blocks: Vec::new(),
        span: SPAN,
    }
}

fn component(kind: &str, attrs: Vec<(&str, hcl::Expression)>) -> ComponentSpec {
    ComponentSpec {
        kind: kind.to_string(),
        name: None,
        body: body(attrs),
        span: SPAN,
    }
}

fn provisioner(attrs: Vec<(&str, hcl::Expression)>) -> ProvisionerSpec {
    ProvisionerSpec {
        component: component("test-prov", attrs),
        position: 1,
        pause_before: None,
        max_retries: 0,
        timeout: None,
    }
}

fn post_processor(suffix: &str, keep: Option<bool>) -> PostProcessorSpec {
    PostProcessorSpec {
        component: component("test-pp", vec![("suffix", suffix.into())]),
        keep_input_artifact: keep,
    }
}

fn build(name: &str, dir: &Path, barrier: bool) -> Build {
    Build {
        name: format!("test.{name}"),
        build_block: None,
        source_type: "test".to_string(),
        source_name: name.to_string(),
        builder: component(
            "test",
            vec![
                ("dir", dir.display().to_string().into()),
                ("barrier", barrier.into()),
            ],
        ),
        provisioners: Vec::new(),
        error_cleanup_provisioner: None,
        post_processors: Vec::new(),
        scope: Scope {
            source_type: "test".to_string(),
            source_name: name.to_string(),
            ..Scope::default()
        },
    }
}

fn plan(builds: Vec<Build>) -> BuildPlan {
    let mut sources = SourceMap::new();
    sources.add("build.pkr.hcl", TEMPLATE);
    BuildPlan {
        builds,
        sensitive_values: Vec::new(),
        sources: Arc::new(sources),
        variables: Vec::new(),
        root: PathBuf::from("."),
    }
}

struct Harness {
    record: Arc<Record>,
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let record = Arc::new(Record::default());
        let mut registry = Registry::default();
        registry.add_builder(Arc::new(TestBuilderKind {
            record: record.clone(),
            barrier: Arc::new(tokio::sync::Barrier::new(2)),
        }));
        registry.add_provisioner(Arc::new(TestProvisionerKind {
            record: record.clone(),
        }));
        registry.add_post_processor(Arc::new(TestPostProcessorKind));
        Harness {
            record,
            registry,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn build(&self, name: &str) -> Build {
        build(name, self.dir.path(), false)
    }

    fn work_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.work"))
    }

    async fn run(&self, plan: &BuildPlan, opts: RunOptions) -> (RunSummary, Vec<EventKind>) {
        let (events, mut rx) = EventSink::channel(Uuid::new_v4(), Redactor::default());
        let summary = tokio::time::timeout(
            Duration::from_secs(60),
            run_plan(plan, &self.registry, opts, events),
        )
        .await
        .expect("run_plan hung");
        (summary, drain(&mut rx))
    }
}

fn errors(summary: &RunSummary, build: usize) -> String {
    summary.builds[build].error.join(" | ")
}

#[tokio::test]
async fn parallel_builds_overlap_only_when_allowed() {
    // With two slots, each build waits at a barrier for the other: they must overlap.
    let h = Harness::new();
    let p = plan(vec![
        build("a", h.dir.path(), true),
        build("b", h.dir.path(), true),
    ]);
    let opts = RunOptions {
        parallel_builds: 2,
        ..RunOptions::default()
    };
    let (summary, _) = h.run(&p, opts).await;
    assert!(summary.ok(), "{summary:?}");
    let r = &h.record;
    assert!(r.when("a", "build start") < r.when("b", "build end"));
    assert!(r.when("b", "build start") < r.when("a", "build end"));

    // With one slot, they never overlap.
    let h = Harness::new();
    let p = plan(vec![h.build("a"), h.build("b")]);
    let opts = RunOptions {
        parallel_builds: 1,
        ..RunOptions::default()
    };
    let (summary, events) = h.run(&p, opts).await;
    assert!(summary.ok(), "{summary:?}");
    let r = &h.record;
    let (first, second) = if r.when("a", "build start") < r.when("b", "build start") {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert!(r.when(first, "build end") <= r.when(second, "build start"));
    assert!(
        matches!(events.first(), Some(EventKind::RunStarted { builds, .. }) if builds.len() == 2)
    );
    assert!(matches!(
        events.last(),
        Some(EventKind::RunFinished {
            ok: true,
            builds_ok: 2,
            ..
        })
    ));
    // Success: the work files were cleaned up.
    assert!(!h.work_file("a").exists() && !h.work_file("b").exists());
}

#[tokio::test]
async fn provisioner_timeout_fails_the_build_and_names_the_provisioner() {
    let h = Harness::new();
    let mut b = h.build("a");
    let mut spec = provisioner(vec![("label", "slow".into()), ("hang", true.into())]);
    spec.timeout = Some(Duration::from_millis(50));
    spec.component.name = Some("install".to_string());
    spec.position = 2;
    b.provisioners = vec![provisioner(vec![("label", "quick".into())]), spec];
    let (summary, events) = h.run(&plan(vec![b]), RunOptions::default()).await;
    let error = errors(&summary, 0);
    assert!(!summary.builds[0].ok && !summary.builds[0].cancelled);
    assert!(
        error.contains("provisioner 2 (test-prov \"install\") at build.pkr.hcl:2:3 failed"),
        "{error}"
    );
    assert!(error.contains("did not finish within 50ms"), "{error}");
    assert!(events.iter().any(|e| matches!(
        e,
        EventKind::StepFinished { step, ok: false, .. } if step == "provisioner 2 (test-prov)"
    )));
    // The default policy cleans up.
    assert!(!h.work_file("a").exists());
}

#[tokio::test]
async fn max_retries_retries_then_succeeds_or_fails() {
    let h = Harness::new();
    let mut ok = h.build("ok");
    let mut spec = provisioner(vec![("label", "flaky".into()), ("fail_times", 2u32.into())]);
    spec.max_retries = 2;
    ok.provisioners = vec![spec];
    let mut bad = h.build("bad");
    let mut spec = provisioner(vec![
        ("label", "broken".into()),
        ("fail_times", 3u32.into()),
    ]);
    spec.max_retries = 2;
    bad.provisioners = vec![spec];
    let (summary, events) = h.run(&plan(vec![ok, bad]), RunOptions::default()).await;
    assert!(summary.builds[0].ok, "{summary:?}");
    assert!(!summary.builds[1].ok);
    let attempts = h.record.attempts.lock().unwrap().clone();
    assert_eq!(attempts["flaky"], 3);
    assert_eq!(attempts["broken"], 3);
    let retries = events
        .iter()
        .filter(|e| matches!(e, EventKind::Message { text, .. } if text.contains("retrying")))
        .count();
    assert_eq!(retries, 4);
    // The runtime password went into the redactor before any provisioner ran.
    let error = errors(&summary, 1);
    assert!(
        error.contains("attempt 3 of broken failed; password <sensitive>"),
        "{error}"
    );
    assert!(!format!("{events:?}").contains("runtime-pw-123"));
}

fn failing_build_with_error_cleanup(h: &Harness) -> BuildPlan {
    let mut b = h.build("a");
    b.provisioners = vec![provisioner(vec![
        ("label", "fails".into()),
        ("fail_times", 1u32.into()),
    ])];
    // `label = build.ConnType`: evaluated with the machine's run-time values.
    let conn_type = hcl::expr::Traversal::builder(hcl::expr::Variable::unchecked("build"))
        .attr("ConnType")
        .build();
    b.error_cleanup_provisioner = Some(provisioner(vec![("label", conn_type.into())]));
    plan(vec![b])
}

#[tokio::test]
async fn error_cleanup_provisioner_runs_unless_aborting() {
    for (on_error, runs, cleans) in [
        (OnError::Cleanup, true, true),
        (OnError::RunCleanupProvisioner, true, false),
        (OnError::Abort, false, false),
    ] {
        let h = Harness::new();
        let opts = RunOptions {
            on_error,
            ..RunOptions::default()
        };
        let (summary, events) = h.run(&failing_build_with_error_cleanup(&h), opts).await;
        assert!(!summary.builds[0].ok);
        assert!(errors(&summary, 0).contains("provisioner 1 (test-prov) at"));
        let ran = h.record.whats().contains(&"none attempt 1".to_string());
        assert_eq!(ran, runs, "{on_error:?}");
        assert_eq!(!h.work_file("a").exists(), cleans, "{on_error:?}");
        let leftovers = events
            .iter()
            .filter(|e| matches!(e, EventKind::Leftover { what, .. } if what.ends_with("a.work")))
            .count();
        assert_eq!(leftovers, usize::from(!cleans), "{on_error:?}");
    }
}

#[tokio::test]
async fn post_processor_chains_and_keep_input_artifact() {
    let h = Harness::new();
    let mut b = h.build("a");
    b.post_processors = vec![
        // The builder artifact is dropped by this chain; `.gz` keeps its input (the post-processor
        // says so), `.sig` does not, the template overriding it.
        vec![
            post_processor(".tar", None),
            PostProcessorSpec {
                component: component(
                    "test-pp",
                    vec![("suffix", ".gz".into()), ("keep", true.into())],
                ),
                keep_input_artifact: None,
            },
            PostProcessorSpec {
                component: component(
                    "test-pp",
                    vec![("suffix", ".sig".into()), ("keep", true.into())],
                ),
                keep_input_artifact: Some(false),
            },
        ],
        // This chain keeps the builder artifact.
        vec![post_processor(".manifest", Some(true))],
    ];
    let (summary, events) = h.run(&plan(vec![b]), RunOptions::default()).await;
    assert!(summary.ok(), "{summary:?}");
    let ids: Vec<&str> = summary.builds[0]
        .artifacts
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "a-artifact",
            "a-artifact.tar",
            "a-artifact.tar.gz.sig",
            "a-artifact.manifest"
        ]
    );
    let produced: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::ArtifactProduced { artifact } => Some(artifact.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        produced,
        [
            "a-artifact",
            "a-artifact.tar",
            "a-artifact.tar.gz",
            "a-artifact.tar.gz.sig",
            "a-artifact.manifest"
        ]
    );
}

#[tokio::test]
async fn failing_post_processor_fails_the_build() {
    let h = Harness::new();
    let mut b = h.build("a");
    b.post_processors = vec![vec![PostProcessorSpec {
        component: component(
            "test-pp",
            vec![("suffix", ".gz".into()), ("fail", true.into())],
        ),
        keep_input_artifact: None,
    }]];
    let (summary, _) = h.run(&plan(vec![b]), RunOptions::default()).await;
    assert!(!summary.builds[0].ok);
    assert_eq!(
        summary.builds[0].error,
        [
            "post-processor test-pp at build.pkr.hcl:2:3 failed",
            "compression failed"
        ]
    );
}

#[tokio::test]
async fn cancellation_stops_builds_and_runs_cleanups() {
    let h = Harness::new();
    let mut a = h.build("a");
    a.provisioners = vec![provisioner(vec![
        ("label", "hangs".into()),
        ("hang", true.into()),
    ])];
    let b = h.build("b");
    let opts = RunOptions {
        parallel_builds: 1,
        ..RunOptions::default()
    };
    let cancel = opts.cancel.clone();
    let p = plan(vec![a, b]);
    let (events, mut rx) = EventSink::channel(Uuid::new_v4(), Redactor::default());
    let watch = async {
        let mut seen = Vec::new();
        while let Some(ev) = rx.recv().await {
            let started = matches!(&ev.kind, EventKind::StepStarted { step } if step == "provisioner 1 (test-prov)");
            seen.push(ev.kind);
            if started {
                cancel.cancel.cancel();
                break;
            }
        }
        seen
    };
    let (summary, mut seen) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(run_plan(&p, &h.registry, opts, events), watch)
    })
    .await
    .expect("run_plan hung");
    seen.extend(drain(&mut rx));
    assert!(summary.cancelled && !summary.ok());
    assert!(summary.builds[0].cancelled, "{summary:?}");
    assert_eq!(summary.builds[0].error, ["cancelled"]);
    // The build that never started is reported cancelled and did nothing.
    assert!(summary.builds[1].cancelled);
    assert_eq!(
        h.record
            .marks
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _, _)| b == "b")
            .count(),
        0
    );
    // The cleanups ran: the work file is gone.
    assert!(!h.work_file("a").exists());
    assert!(seen.iter().any(|e| matches!(
        e,
        EventKind::CleanupFinished { step, ok: true, .. } if step == "create work file"
    )));
    assert!(matches!(
        seen.last(),
        Some(EventKind::RunFinished {
            cancelled: true,
            builds_failed: 2,
            ..
        })
    ));
}

/// Answers every question with `answer` and counts the questions.
struct CountingAsker {
    answer: AskAnswer,
    questions: Mutex<Vec<(String, String)>>,
}

impl Asker for CountingAsker {
    fn ask(&self, build: &str, error: &str) -> AskAnswer {
        self.questions
            .lock()
            .unwrap()
            .push((build.to_string(), error.to_string()));
        self.answer
    }
}

#[tokio::test]
async fn ask_asks_once_per_failure_and_follows_the_answer() {
    for answer in [AskAnswer::Cleanup, AskAnswer::Abort] {
        let h = Harness::new();
        let asker = Arc::new(CountingAsker {
            answer,
            questions: Mutex::new(Vec::new()),
        });
        let opts = RunOptions {
            on_error: OnError::Ask,
            asker: Some(asker.clone()),
            ..RunOptions::default()
        };
        let (summary, _) = h.run(&failing_build_with_error_cleanup(&h), opts).await;
        assert!(!summary.builds[0].ok);
        let questions = asker.questions.lock().unwrap().clone();
        assert_eq!(questions.len(), 1, "{answer:?}: {questions:?}");
        assert_eq!(questions[0].0, "test.a");
        assert!(
            questions[0]
                .1
                .contains("attempt 1 of fails failed; password <sensitive>"),
            "{questions:?}"
        );
        let cleaned = answer == AskAnswer::Cleanup;
        let error_cleanup_ran = h.record.whats().contains(&"none attempt 1".to_string());
        assert_eq!(error_cleanup_ran, cleaned, "{answer:?}");
        assert_eq!(!h.work_file("a").exists(), cleaned, "{answer:?}");
    }
}

/// Answers `Retry` to the first `retries` questions, then `Cleanup`.
struct RetryingAsker {
    retries: usize,
    questions: Mutex<Vec<String>>,
}

impl Asker for RetryingAsker {
    fn ask(&self, _: &str, error: &str) -> AskAnswer {
        let mut questions = self.questions.lock().unwrap();
        questions.push(error.to_string());
        if questions.len() <= self.retries {
            AskAnswer::Retry
        } else {
            AskAnswer::Cleanup
        }
    }
}

#[tokio::test]
async fn ask_retry_runs_the_failed_provisioner_again() {
    // (times the provisioner fails, retries answered, build ok, questions asked)
    for (fail_times, retries, ok, asked) in [(2, 2, true, 2), (3, 1, false, 2)] {
        let h = Harness::new();
        let mut b = h.build("a");
        b.provisioners = vec![
            provisioner(vec![("label", "first".into())]),
            provisioner(vec![
                ("label", "flaky".into()),
                ("fail_times", fail_times.into()),
            ]),
        ];
        let asker = Arc::new(RetryingAsker {
            retries,
            questions: Mutex::new(Vec::new()),
        });
        let opts = RunOptions {
            on_error: OnError::Ask,
            asker: Some(asker.clone()),
            ..RunOptions::default()
        };
        let (summary, _) = h.run(&plan(vec![b]), opts).await;
        assert_eq!(summary.builds[0].ok, ok, "{:?}", summary.builds[0].error);
        let whats = h.record.whats();
        // Only the failed provisioner runs again, not the ones before it.
        assert_eq!(
            whats.iter().filter(|w| w.starts_with("first")).count(),
            1,
            "{whats:?}"
        );
        let flaky_runs = whats.iter().filter(|w| w.starts_with("flaky")).count();
        assert_eq!(flaky_runs, retries + 1, "{whats:?}");
        let questions = asker.questions.lock().unwrap().clone();
        assert_eq!(questions.len(), asked, "{questions:?}");
        assert!(
            questions[0].contains("attempt 1 of flaky failed"),
            "{questions:?}"
        );
        // Retried or not, the build's resources are released (a cleanup answer cleans up).
        assert!(!h.work_file("a").exists());
    }
}

#[tokio::test]
async fn unknown_builder_type_is_a_configuration_error() {
    let h = Harness::new();
    let mut b = h.build("a");
    b.source_type = "qemu".to_string();
    let (summary, events) = h.run(&plan(vec![b]), RunOptions::default()).await;
    assert_eq!(
        summary.builds[0].error,
        ["invalid configuration", "unknown builder type `qemu`"]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        EventKind::BuildFinished {
            ok: false,
            cancelled: false,
            error: Some(_),
            ..
        }
    )));
}

#[tokio::test]
async fn pause_before_is_cut_short_by_cancellation() {
    let h = Harness::new();
    let mut b = h.build("a");
    let mut spec = provisioner(vec![("label", "late".into())]);
    spec.pause_before = Some(Duration::from_secs(3600));
    b.provisioners = vec![spec];
    let opts = RunOptions::default();
    let cancel = opts.cancel.clone();
    let p = plan(vec![b]);
    let (events, mut rx) = EventSink::channel(Uuid::new_v4(), Redactor::default());
    let watch = async {
        while let Some(ev) = rx.recv().await {
            if matches!(&ev.kind, EventKind::Message { text, .. } if text.starts_with("pausing")) {
                cancel.cancel.cancel();
                break;
            }
        }
    };
    let (summary, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(run_plan(&p, &h.registry, opts, events), watch)
    })
    .await
    .expect("run_plan hung");
    assert!(summary.cancelled && summary.builds[0].cancelled);
    assert!(h.record.whats().iter().all(|w| !w.starts_with("late")));
    assert!(!h.work_file("a").exists());
}
