//! The docker post-processors against a real engine and a local registry: a busybox image built
//! by the `docker` builder is tagged, pushed, pulled back by digest, saved, and an exported
//! filesystem is imported; the manifest records what they made.

use std::io::{Read, Write};
use std::path::Path;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use kiln_core::component::Registry;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::runner::{run_plan, BuildOutcome, RunOptions};
use kiln_core::template::{self, LoadOptions};
use kiln_testkit::docker::{busybox_image, engine, inspect_image, registry, remove_image};

fn components() -> Registry {
    let mut r = Registry::default();
    docker::register(&mut r);
    shell::register(&mut r);
    docker_post_processors::register(&mut r);
    manifest::register(&mut r);
    r
}

/// Builds the template text in a temp dir; returns the one build's outcome and the messages.
async fn build(text: &str) -> (BuildOutcome, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("build.pkr.hcl"), text).unwrap();
    let opts = LoadOptions {
        path: dir.path().to_path_buf(),
        var_args: Vec::new(),
        env: Vec::new(),
    };
    let registry = components();
    let loaded = template::load(&opts);
    let (plan, diags) = template::plan(&loaded, &opts, &registry);
    let plan = plan.unwrap_or_else(|| panic!("the template is invalid:\n{diags}"));
    let (sink, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    let mut summary = run_plan(&plan, &registry, RunOptions::default(), sink).await;
    let mut messages = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let EventKind::Message { text, .. } = event.kind {
            messages.push(text);
        }
    }
    let outcome = summary.builds.remove(0);
    assert!(outcome.ok, "{:?}", outcome.error);
    (outcome, messages)
}

async fn docker() -> Docker {
    Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

#[tokio::test]
async fn tag_push_and_save_then_pull_back_by_digest() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = registry() else { return };
    let repo = format!("{}/kiln/pushed", reg.host());
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("image.tar");
    let text = format!(
        r#"
source "docker" "push" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.push"]
  provisioner "shell" {{
    inline = ["echo pushed > /pushed.txt"]
  }}
  post-processors {{
    post-processor "docker-tag" {{
      repository = "{repo}"
      tags       = ["1.0", "1.0", "latest"]
    }}
    post-processor "docker-push" {{}}
    post-processor "docker-save" {{
      path = "{saved}"
    }}
  }}
}}
"#,
        base = busybox_image(&[]),
        saved = saved.display()
    );
    let (outcome, messages) = build(&text).await;
    let artifact = outcome.artifacts.last().unwrap();
    let image = artifact.id.clone();
    assert_eq!(
        messages.iter().filter(|m| m.starts_with("pushed ")).count(),
        2,
        "each tag is pushed once: {messages:?}"
    );
    let digests = artifact.data["RepoDigests"].as_array().unwrap();
    assert_eq!(digests.len(), 1, "{digests:?}");
    let by_digest = digests[0].as_str().unwrap().to_string();
    assert!(
        by_digest.starts_with(&format!("{repo}@sha256:")),
        "{by_digest}"
    );
    let file = &artifact.files[0];
    assert_eq!(file.path, saved);
    assert!(tar_has(&saved, "manifest.json"));

    // Pull it back by digest after removing every local name of it.
    let docker = docker().await;
    remove_image(&image);
    let options = CreateImageOptions {
        from_image: Some(by_digest.clone()),
        from_src: None,
        repo: None,
        tag: None,
        message: None,
        changes: Vec::new(),
        platform: String::new(),
    };
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(item) = pull.next().await {
        item.unwrap();
    }
    let pulled = docker.inspect_image(&by_digest).await.unwrap();
    assert_eq!(pulled.id.as_deref(), Some(image.as_str()));
    remove_image(&image);
}

#[tokio::test]
async fn an_exported_filesystem_is_imported_with_changes() {
    if engine().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let exported = out.path().join("fs.tar");
    let text = format!(
        r#"
source "docker" "flat" {{
  image       = "{base}"
  export_path = "{exported}"
}}
build {{
  sources = ["source.docker.flat"]
  provisioner "shell" {{
    inline = ["echo flat > /flat.txt"]
  }}
  post-processor "docker-import" {{
    repository = "kiln-test/imported"
    tag        = "{tag}"
    changes    = ["CMD [\"cat\", \"/flat.txt\"]", "ENV FLAT=1"]
  }}
}}
"#,
        base = busybox_image(&[]),
        exported = exported.display(),
        tag = uuid::Uuid::new_v4().simple()
    );
    let (outcome, _) = build(&text).await;
    let artifact = outcome.artifacts.last().unwrap();
    assert_eq!(artifact.builder_type, "docker-import");
    let docker = docker().await;
    let config = docker
        .inspect_image(&artifact.id)
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(
        config.cmd,
        Some(vec!["cat".to_string(), "/flat.txt".to_string()])
    );
    assert!(config.env.unwrap().contains(&"FLAT=1".to_string()));
    remove_image(&artifact.id);
}

fn tar_has(path: &Path, name: &str) -> bool {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let found = archive
        .entries()
        .unwrap()
        .any(|e| e.unwrap().path().unwrap() == Path::new(name));
    found
}

#[tokio::test]
async fn reproducible_rebuilds_push_the_same_manifest_digest() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = registry() else { return };
    let text = format!(
        r#"
source "docker" "repro" {{
  image        = "{base}"
  commit       = true
  reproducible = true
}}
build {{
  sources = ["source.docker.repro"]
  provisioner "shell" {{
    inline = ["echo same > /same.txt"]
  }}
  post-processors {{
    post-processor "docker-tag" {{
      repository = "{host}/kiln/repro"
      tags       = ["1"]
    }}
    post-processor "docker-push" {{}}
  }}
}}
"#,
        base = busybox_image(&[]),
        host = reg.host()
    );
    let mut digests = Vec::new();
    for _ in 0..2 {
        let (outcome, _) = build(&text).await;
        let artifact = outcome.artifacts.last().unwrap();
        digests.push(
            artifact.data["RepoDigests"][0]
                .as_str()
                .unwrap()
                .to_string(),
        );
        // The second build starts from nothing of the first.
        remove_image(&artifact.id);
    }
    assert_eq!(digests[0], digests[1]);
}

/// The digest the registry at `host` serves for `repo:tag` (its `Docker-Content-Digest`).
fn registry_digest(host: &str, repo: &str, tag: &str) -> String {
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: {host}\r\nAccept: \
         application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, _) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest in {head}"))
}

#[tokio::test]
async fn the_manifest_records_the_image_id_and_the_pushed_repository_digest() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = registry() else { return };
    let repo = format!("{}/kiln/manifest", reg.host());
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("manifest.json");
    let base = busybox_image(&[]);
    let text = format!(
        r#"
source "docker" "recorded" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.recorded"]
  provisioner "shell" {{
    inline = ["echo recorded > /recorded.txt"]
  }}
  post-processor "manifest" {{
    output = "{manifest}"
  }}
  post-processors {{
    post-processor "docker-tag" {{
      repository = "{repo}"
      tags       = ["1"]
    }}
    post-processor "docker-push" {{}}
    post-processor "manifest" {{
      output = "{manifest}"
    }}
  }}
}}
"#,
        manifest = manifest.display()
    );
    build(&text).await;
    let name = format!("{repo}:1");
    let engine_view = inspect_image(&name);
    let image = engine_view["Id"].as_str().unwrap().to_string();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    remove_image(&image);
    let builds = doc["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2, "{doc}");

    // Straight from the builder: the image the engine has under the pushed name.
    let built = &builds[0];
    assert_eq!(built["builder_type"], "docker", "{built}");
    assert_eq!(built["name"], "recorded");
    assert_eq!(built["artifact_id"], image.as_str());
    assert_eq!(built["data"]["ImageId"], image.as_str());
    assert_eq!(built["data"]["BaseImage"], base.as_str());
    assert_eq!(built["files"], serde_json::json!([]));

    // After the push: the same image, and the digest the registry serves for the tag.
    let pushed = &builds[1];
    // The builder's type, as Packer writes it, not the post-processor's that made the artifact.
    assert_eq!(pushed["builder_type"], "docker", "{pushed}");
    assert_eq!(pushed["artifact_id"], image.as_str(), "{pushed}");
    assert_eq!(pushed["data"]["ImageId"], image.as_str());
    assert_eq!(pushed["data"]["RepoTags"], serde_json::json!([name]));
    let digest = registry_digest(&reg.host(), "kiln/manifest", "1");
    assert_eq!(
        pushed["data"]["RepoDigests"],
        serde_json::json!([format!("{repo}@{digest}")])
    );
    assert_eq!(engine_view["RepoDigests"], pushed["data"]["RepoDigests"]);
    assert_eq!(doc["last_run_uuid"], built["packer_run_uuid"]);
}
