//! What the docker builder's engine tests share: planning and running a template with the
//! provisioners, running the produced image, and finding the containers a run left.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use kiln_core::component::Registry;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::plan::BuildPlan;
use kiln_core::runner::{run_plan, OnError, RunOptions, RunSummary};
use kiln_core::template::{self, LoadOptions};
use kiln_testkit::docker::{container_names, remove_image, RemoveOnDrop};

/// The docker builder and every provisioner.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    docker::register(&mut registry);
    shell::register(&mut registry);
    file::register(&mut registry);
    shell_local::register(&mut registry);
    breakpoint::register(&mut registry);
    ansible::register(&mut registry);
    registry
}

pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// Plans the template at `dir` with `vars` against [`registry`], which must accept it.
pub fn plan(dir: &Path, vars: &[(&str, &str)]) -> (BuildPlan, Registry) {
    let opts = LoadOptions {
        path: dir.to_path_buf(),
        var_args: vars
            .iter()
            .map(|(k, v)| kiln_core::template::VarArg::Var(k.to_string(), v.to_string()))
            .collect(),
        env: Vec::new(),
    };
    let registry = registry();
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry);
    let plan = plan.unwrap_or_else(|| panic!("the template is invalid:\n{diags}"));
    (plan, registry)
}

/// Plans and runs the template at `dir` with `vars`; returns the summary and the events.
pub async fn build(
    dir: &Path,
    vars: &[(&str, &str)],
    on_error: OnError,
) -> (RunSummary, Vec<EventKind>, uuid::Uuid) {
    let (plan, registry) = plan(dir, vars);
    let run_id = uuid::Uuid::new_v4();
    let (sink, mut rx) = EventSink::channel(run_id, Redactor::default());
    let options = RunOptions {
        on_error,
        ..RunOptions::default()
    };
    let summary = run_plan(&plan, &registry, options, sink).await;
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event.kind);
    }
    (summary, events, run_id)
}

/// A template directory holding `text` as its only file.
pub fn template_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("build.pkr.hcl"), text).unwrap();
    dir
}

/// A template whose one build is the source `docker.NAME`, committing a container of `base`
/// with the source attributes `attrs` (HCL lines) added, and `body` in the build block.
pub fn one_source_template(name: &str, base: &str, attrs: &str, body: &str) -> tempfile::TempDir {
    template_dir(&format!(
        r#"
source "docker" "{name}" {{
  image  = "{base}"
  commit = true
  {attrs}
}}
build {{
  sources = ["source.docker.{name}"]
  {body}
}}
"#
    ))
}

pub async fn docker() -> Docker {
    Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Runs `image` (with `cmd` instead of its CMD when given) to its end; returns its output.
pub async fn run_image(docker: &Docker, image: &str, cmd: Option<&[&str]>) -> String {
    run(
        docker,
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: cmd.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..ContainerCreateBody::default()
        },
    )
    .await
}

/// Runs `sh -c script` in `image`, whatever its ENTRYPOINT and USER; returns the output.
pub async fn run_script(docker: &Docker, image: &str, script: &str) -> String {
    run(
        docker,
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            cmd: Some(vec![script.to_string()]),
            user: Some("0".to_string()),
            ..ContainerCreateBody::default()
        },
    )
    .await
}

/// Creates a container from `body`, runs it to its end and removes it; returns its output.
pub async fn run(docker: &Docker, body: ContainerCreateBody) -> String {
    let (guard, started) = start(docker, body).await;
    started.unwrap();
    let id = guard.0.as_str();
    let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
    while let Some(status) = wait.next().await {
        status.unwrap();
    }
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..LogsOptions::default()
    };
    let mut logs = docker.logs(id, Some(options));
    let mut out = String::new();
    while let Some(chunk) = logs.next().await {
        out.push_str(&chunk.unwrap().to_string());
    }
    out
}

/// Creates a container from `body` and starts it; the guard removes it.
pub async fn start(
    docker: &Docker,
    body: ContainerCreateBody,
) -> (RemoveOnDrop, Result<(), bollard::errors::Error>) {
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .unwrap();
    let guard = RemoveOnDrop(created.id);
    let started = docker
        .start_container(&guard.0, None::<StartContainerOptions>)
        .await;
    (guard, started)
}

/// The artifact id of the run's only build, which must have succeeded.
pub fn artifact_id(summary: &RunSummary) -> String {
    assert!(summary.ok(), "{:?}", summary.builds);
    summary.builds[0].artifacts[0].id.clone()
}

/// The names of the containers of the run `run_id` that exist.
pub fn containers_of(run_id: uuid::Uuid) -> Vec<String> {
    let prefix = format!("kiln-{}", &run_id.simple().to_string()[..12]);
    container_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// No container of the run `run_id` exists any more.
pub fn assert_no_container_of(run_id: uuid::Uuid) {
    let left = containers_of(run_id);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

/// Removes the image it names (with force) when dropped, so a failing test leaves none.
#[derive(Debug)]
pub struct RemoveImageOnDrop(pub String);

impl Drop for RemoveImageOnDrop {
    fn drop(&mut self) {
        remove_image(&self.0);
    }
}
