//! Tests of the manifest post-processor: the file's shape, appending, atomicity and locking.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_core::artifact::ArtifactFile;
use kiln_core::event::{EventSink, Redactor};
use kiln_core::plan::Config;
use kiln_core::runner::{BuildCtx, Cancel, OnError};
use serde_json::{json, Value};

use super::*;

fn config(attrs: Value) -> Config {
    Config::from_json(TYPE_NAME, attrs)
}

fn build_ctx(source_name: &str) -> BuildCtx {
    let (sink, _rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    BuildCtx {
        run_id: sink.run_id(),
        build_name: format!("hello.null.{source_name}"),
        source_type: "null".to_string(),
        source_name: source_name.to_string(),
        events: sink,
        cancel: Cancel::new(),
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

fn artifact() -> Artifact {
    Artifact {
        builder_type: "null".to_string(),
        id: "Null".to_string(),
        files: vec![ArtifactFile {
            path: PathBuf::from("output/disk.qcow2"),
            size: 42,
            sha256: "ab".repeat(32),
        }],
        data: serde_json::Map::new(),
    }
}

fn manifest(attrs: Value) -> Box<dyn PostProcessor> {
    ManifestKind.configure(&config(attrs)).unwrap()
}

async fn process(pp: &dyn PostProcessor, ctx: &BuildCtx) -> PostProcessed {
    pp.process(ctx, artifact()).await.unwrap()
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Names in `dir` other than the manifest (its lock file included: it is removed after use).
fn stray_files(dir: &Path, manifest: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| *n != manifest)
        .collect()
}

#[tokio::test]
async fn writes_a_packer_manifest_and_passes_the_artifact_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/manifest.json");
    let pp = manifest(json!({ "output": out, "custom_data": { "team": "infra" } }));
    let ctx = build_ctx("first");
    let processed = process(pp.as_ref(), &ctx).await;
    assert_eq!(processed.artifact, artifact());
    assert!(processed.keep_input);

    let doc = read(&out);
    let run = ctx.run_id.to_string();
    assert_eq!(doc["last_run_uuid"], json!(run));
    let builds = doc["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1);
    let b = &builds[0];
    assert_eq!(b["name"], "first");
    assert_eq!(b["kiln_build"], "hello.null.first");
    assert_eq!(b["builder_type"], "null");
    assert_eq!(b["artifact_id"], "Null");
    assert_eq!(b["packer_run_uuid"], json!(run));
    assert_eq!(b["custom_data"], json!({ "team": "infra" }));
    assert!(b["build_time"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        b["files"],
        json!([{ "name": "output/disk.qcow2", "size": 42, "sha256": "ab".repeat(32) }])
    );
    assert!(stray_files(out.parent().unwrap(), "manifest.json").is_empty());
}

#[tokio::test]
async fn strip_path_and_strip_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let pp = manifest(json!({ "output": out, "strip_path": true, "strip_time": true }));
    process(pp.as_ref(), &build_ctx("first")).await;
    let b = &read(&out)["builds"][0];
    assert_eq!(b["files"][0]["name"], "disk.qcow2");
    assert!(b.get("build_time").is_none(), "{b}");
}

#[test]
fn output_defaults_to_packers_name() {
    let opts: Options = config(json!({})).decode().unwrap();
    assert_eq!(opts.output, None);
    assert_eq!(DEFAULT_OUTPUT, "packer-manifest.json");
    let d = match ManifestKind.configure(&config(json!({ "custom_data": "x" }))) {
        Ok(_) => panic!("a string custom_data was accepted"),
        Err(d) => d,
    };
    assert!(d.to_string().contains("`custom_data`"), "{d}");
}

#[tokio::test]
async fn second_run_appends_and_keeps_foreign_content() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("packer-manifest.json");
    std::fs::write(
        &out,
        r#"{"builds":[{"name":"from-packer","builder_type":"docker"}],"last_run_uuid":"old","extra":1}"#,
    )
    .unwrap();
    let pp = manifest(json!({ "output": out }));
    process(pp.as_ref(), &build_ctx("first")).await;
    let second = build_ctx("second");
    process(pp.as_ref(), &second).await;

    let doc = read(&out);
    let names: Vec<&str> = doc["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-packer", "first", "second"]);
    assert_eq!(doc["last_run_uuid"], json!(second.run_id.to_string()));
    assert_eq!(doc["extra"], 1);
    assert!(stray_files(dir.path(), "packer-manifest.json").is_empty());
}

#[tokio::test]
async fn invalid_existing_manifest_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    std::fs::write(&out, "{ not json").unwrap();
    let pp = manifest(json!({ "output": out }));
    let err = pp
        .process(&build_ctx("first"), artifact())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "{ not json");
    assert!(stray_files(dir.path(), "m.json").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_builds_keep_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let pp: Arc<dyn PostProcessor> = Arc::from(manifest(json!({ "output": out })));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let pp = pp.clone();
            tokio::spawn(async move {
                let ctx = build_ctx(&format!("b{i}"));
                pp.process(&ctx, artifact()).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let doc = read(&out);
    let mut names: Vec<String> = doc["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..16).map(|i| format!("b{i}")).collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn waits_for_the_file_lock_of_another_process() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    // Another writer (as another process would) holds the advisory lock.
    let held = std::fs::File::create(dir.path().join("m.json.lock")).unwrap();
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);

    let pp: Arc<dyn PostProcessor> = Arc::from(manifest(json!({ "output": out })));
    let writer = tokio::spawn({
        let pp = pp.clone();
        async move { pp.process(&build_ctx("first"), artifact()).await.is_ok() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "wrote while another holder had the lock"
    );
    assert!(!out.exists());

    drop(held);
    assert!(writer.await.unwrap());
    assert_eq!(read(&out)["builds"].as_array().unwrap().len(), 1);
    assert_eq!(stray_files(dir.path(), "m.json"), Vec::<String>::new());
}

#[test]
fn every_option_is_documented() {
    let page = manifest_dir().join("../../docs/post-processors/manifest.md");
    let text = std::fs::read_to_string(&page)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
    for opt in OPTIONS {
        assert!(
            text.contains(&format!("`{}`", opt.name)),
            "option `{}` is not documented in {}",
            opt.name,
            page.display()
        );
    }
}

#[test]
fn register_adds_the_kind() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert_eq!(
        registry.post_processors["manifest"].options().len(),
        OPTIONS.len()
    );
}

/// This crate's directory. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests; the compile-time
/// value can name another checkout when several share one target directory.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
