//! The docker post-processors against a real engine and a local registry: a busybox image built
//! by the `docker` builder is tagged, pushed, pulled back by digest, saved, and an exported
//! filesystem is imported; the manifest records what they made.

use std::io::{Read, Write};

use sha2::Digest;
use std::path::Path;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use kiln_core::component::Registry;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::runner::{run_plan, BuildOutcome, RunOptions};
use kiln_core::template::{self, LoadOptions};
use kiln_testkit::docker::{
    auth_registry, busybox_image, engine, has_image, inspect_image, registry, remove_image,
    tag_image,
};

fn components() -> Registry {
    let mut r = Registry::default();
    docker::register(&mut r);
    shell::register(&mut r);
    docker_post_processors::register(&mut r);
    manifest::register(&mut r);
    r
}

/// Builds the template text in a temp dir; returns the one build's outcome, which must have
/// succeeded, and the messages.
async fn build(text: &str) -> (BuildOutcome, Vec<String>) {
    let (outcome, messages) = try_build(text).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    (outcome, messages)
}

/// [`build`] for a build that may fail.
async fn try_build(text: &str) -> (BuildOutcome, Vec<String>) {
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
    (summary.builds.remove(0), messages)
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
    assert_eq!(built["data"]["BaseImageId"], inspect_image(&base)["Id"]);
    assert_eq!(built["files"], serde_json::json!([]));

    // After the push: the same image, and the digest the registry serves for the tag.
    let pushed = &builds[1];
    // The builder's type, as Packer writes it, not the post-processor's that made the artifact.
    assert_eq!(pushed["builder_type"], "docker", "{pushed}");
    assert_eq!(pushed["artifact_id"], image.as_str(), "{pushed}");
    assert_eq!(pushed["data"]["ImageId"], image.as_str());
    assert_eq!(pushed["data"]["BaseImageId"], built["data"]["BaseImageId"]);
    assert_eq!(pushed["data"]["RepoTags"], serde_json::json!([name]));
    let digest = registry_digest(&reg.host(), "kiln/manifest", "1");
    assert_eq!(
        pushed["data"]["RepoDigests"],
        serde_json::json!([format!("{repo}@{digest}")])
    );
    assert_eq!(engine_view["RepoDigests"], pushed["data"]["RepoDigests"]);
    assert_eq!(doc["last_run_uuid"], built["packer_run_uuid"]);
}

/// Removes the image it names (with force) when dropped, so a failing test leaves none.
struct RemoveImageOnDrop(String);

impl Drop for RemoveImageOnDrop {
    fn drop(&mut self) {
        remove_image(&self.0);
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A build of a busybox image with a file of its own, followed by `post_processors` (HCL).
fn busybox_build(name: &str, post_processors: &str) -> String {
    format!(
        r#"
source "docker" "{name}" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.{name}"]
  provisioner "shell" {{
    inline = ["echo {unique} > /{name}.txt"]
  }}
  {post_processors}
}}
"#,
        base = busybox_image(&[]),
        unique = unique()
    )
}

/// A chain of post-processors: `docker-tag` as `repo:tag`, then `next` (HCL).
fn tag_then(repo: &str, tag: &str, next: &str) -> String {
    format!(
        r#"
  post-processors {{
    post-processor "docker-tag" {{
      repository = "{repo}"
      tags       = ["{tag}"]
    }}
    {next}
  }}
"#
    )
}

/// The artifact of `outcome` whose `RepoTags` include `name`.
fn artifact_tagged<'o>(outcome: &'o BuildOutcome, name: &str) -> &'o kiln_core::artifact::Artifact {
    outcome
        .artifacts
        .iter()
        .find(|a| {
            a.data
                .get("RepoTags")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|tags| tags.iter().any(|t| t == name))
        })
        .unwrap_or_else(|| panic!("no artifact tagged {name}: {:?}", outcome.artifacts))
}

#[tokio::test]
async fn docker_tag_moves_existing_tags_with_or_without_force_and_tag_adds_one() {
    if engine().is_none() {
        return;
    }
    let repo = format!("kiln-test/tagged-{}", unique());
    // Both names exist already, on the base image.
    let base = busybox_image(&[]);
    let base_id = inspect_image(&base)["Id"].as_str().unwrap().to_string();
    tag_image(&base, &repo, "forced");
    tag_image(&base, &repo, "moved");
    let _forced = RemoveImageOnDrop(format!("{repo}:forced"));
    let _moved = RemoveImageOnDrop(format!("{repo}:moved"));
    let text = busybox_build(
        "tagged",
        &format!(
            r#"
  post-processor "docker-tag" {{
    repository = "{repo}"
    tag        = "forced"
    force      = true
  }}
  post-processor "docker-tag" {{
    repository = "{repo}"
    tags       = ["moved"]
    tag        = "added"
  }}
"#
        ),
    );
    let (outcome, _) = build(&text).await;
    let image = outcome.artifacts[0].id.clone();
    let _image = RemoveImageOnDrop(image.clone());
    assert_ne!(image, base_id);
    let forced = artifact_tagged(&outcome, &format!("{repo}:forced"));
    assert_eq!(
        forced.data["RepoTags"],
        serde_json::json!([format!("{repo}:forced")])
    );
    let moved = artifact_tagged(&outcome, &format!("{repo}:moved"));
    assert_eq!(
        moved.data["RepoTags"],
        serde_json::json!([format!("{repo}:moved"), format!("{repo}:added")])
    );
    // The engine agrees: every name is the new image's now, and the base keeps its own name.
    for tag in ["forced", "moved", "added"] {
        assert_eq!(
            inspect_image(&format!("{repo}:{tag}"))["Id"],
            image.as_str()
        );
    }
    assert_eq!(inspect_image(&base)["Id"], base_id.as_str());
}

#[tokio::test]
async fn a_saved_tarball_loads_back_with_its_tag_and_id() {
    if engine().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("saved.tar");
    let repo = format!("kiln-test/saved-{}", unique());
    let name = format!("{repo}:1");
    let save = format!(
        "post-processor \"docker-save\" {{\n  path = \"{}\"\n}}",
        saved.display()
    );
    let text = busybox_build("saved", &tag_then(&repo, "1", &save));
    let (outcome, _) = build(&text).await;
    let artifact = outcome.artifacts.last().unwrap();
    assert_eq!(artifact.builder_type, "docker-save");
    let image = artifact.id.clone();
    let _image = RemoveImageOnDrop(image.clone());
    // The artifact lists the file as it is on disk.
    let bytes = std::fs::read(&saved).unwrap();
    assert_eq!(artifact.files.len(), 1, "{artifact:?}");
    let file = &artifact.files[0];
    assert_eq!(file.path, saved);
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(file.sha256, format!("{:x}", sha2::Sha256::digest(&bytes)));

    remove_image(&image);
    assert!(!has_image(&image));
    let docker = docker().await;
    let options = bollard::query_parameters::ImportImageOptions::default();
    let mut load = docker.import_image(options, bollard::body_full(bytes.into()), None);
    while let Some(item) = load.next().await {
        let info = item.unwrap();
        assert!(info.error_detail.is_none(), "{info:?}");
    }
    assert_eq!(inspect_image(&name)["Id"], image.as_str());
}

/// The platform of the engine's own images, and another one.
async fn native_and_foreign_platform(docker: &Docker) -> (String, String) {
    let info = docker.info().await.unwrap();
    let native = match info.architecture.as_deref() {
        Some("aarch64") => "arm64",
        _ => "amd64",
    };
    let foreign = if native == "amd64" { "arm64" } else { "amd64" };
    (format!("linux/{native}"), format!("linux/{foreign}"))
}

/// A build exporting the busybox base's filesystem, then importing it as `repo:1` for
/// `platform`, then `more` post-processors (HCL).
fn import_build(exported: &Path, repo: &str, platform: &str, more: &str) -> String {
    format!(
        r#"
source "docker" "flat" {{
  image       = "{base}"
  export_path = "{exported}"
}}
build {{
  sources = ["source.docker.flat"]
  post-processors {{
    post-processor "docker-import" {{
      repository = "{repo}"
      tag        = "1"
      platform   = "{platform}"
    }}
    {more}
  }}
}}
"#,
        base = busybox_image(&[]),
        exported = exported.display()
    )
}

#[tokio::test]
async fn an_import_with_a_platform_is_pushed_under_its_name() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = registry() else { return };
    let docker = docker().await;
    let (native, _) = native_and_foreign_platform(&docker).await;
    let out = tempfile::tempdir().unwrap();
    let path = format!("kiln/imported-{}", unique());
    let repo = format!("{}/{path}", reg.host());
    let text = import_build(
        &out.path().join("fs.tar"),
        &repo,
        &native,
        "post-processor \"docker-push\" {}",
    );
    let (outcome, messages) = build(&text).await;
    let artifact = outcome.artifacts.last().unwrap();
    let _image = RemoveImageOnDrop(artifact.id.clone());
    assert_eq!(artifact.builder_type, "docker-push");
    let name = format!("{repo}:1");
    assert!(messages.contains(&format!("pushed {name}")), "{messages:?}");
    let raw = inspect_image(&name);
    assert_eq!(raw["Id"], artifact.id.as_str());
    assert_eq!(platform_of(&raw), native);
    let digest = registry_digest(&reg.host(), &path, "1");
    assert_eq!(
        artifact.data["RepoDigests"],
        serde_json::json!([format!("{repo}@{digest}")])
    );
}

fn platform_of(raw: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        raw["Os"].as_str().unwrap(),
        raw["Architecture"].as_str().unwrap()
    )
}

#[tokio::test]
async fn an_import_for_another_platform_has_it_or_fails_saying_so() {
    if engine().is_none() {
        return;
    }
    let docker = docker().await;
    let (native, foreign) = native_and_foreign_platform(&docker).await;
    let out = tempfile::tempdir().unwrap();
    let repo = format!("kiln-test/foreign-{}", unique());
    let name = format!("{repo}:1");
    let _name = RemoveImageOnDrop(name.clone());
    let text = import_build(&out.path().join("fs.tar"), &repo, &foreign, "");
    let (outcome, _) = try_build(&text).await;
    if outcome.ok {
        // An engine that honours the whole platform.
        assert_eq!(platform_of(&inspect_image(&name)), foreign);
    } else {
        // Older ones keep only the OS: no image of the wrong platform is left behind.
        let error = outcome.error.join(": ");
        let expected = format!(
            "the engine imported `{name}` for `{native}`, not for the platform `{foreign}`"
        );
        assert!(error.contains(&expected), "{error}");
        assert!(!has_image(&name));
    }
}

#[tokio::test]
async fn a_registry_that_requires_a_login_gets_the_template_s_credentials() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = auth_registry() else { return };
    // Anonymous clients are refused, so nothing below can work without the credentials.
    assert_eq!(reg.anonymous_status(), 401);
    let (user, password) = reg.login().unwrap();
    let repo = format!("{}/kiln/auth", reg.host());
    let tag = unique();
    let name = format!("{repo}:{tag}");
    let _name = RemoveImageOnDrop(name.clone());
    let pushing = |push: &str| {
        let push = format!("post-processor \"docker-push\" {{\n  {push}\n}}");
        busybox_build("auth", &tag_then(&repo, &tag, &push))
    };
    let login = format!(
        "login = true\n  login_server = \"{}\"\n  login_username = \"{user}\"\n  \
         login_password = \"{password}\"",
        reg.host()
    );

    // Without credentials the push fails, naming what it pushed.
    let (outcome, _) = try_build(&pushing("")).await;
    assert!(!outcome.ok);
    let error = outcome.error.join(": ");
    assert!(error.contains(&format!("cannot push `{name}`")), "{error}");
    assert!(error.contains("credentials"), "{error}");
    remove_image(&name);

    // With them it works.
    let (outcome, _) = build(&pushing(&login)).await;
    let artifact = outcome.artifacts.last().unwrap();
    let image = artifact.id.clone();
    let _image = RemoveImageOnDrop(image.clone());
    let digests = artifact.data["RepoDigests"].as_array().unwrap();
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert!(
        digests[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{repo}@sha256:")),
        "{digests:?}"
    );
    remove_image(&image);
    assert!(!has_image(&name));

    // The builder pulls it back only with `login`.
    let pulling = |attrs: &str| {
        format!(
            r#"
source "docker" "pulled" {{
  image   = "{name}"
  discard = true
  {attrs}
}}
build {{
  sources = ["source.docker.pulled"]
  provisioner "shell" {{
    inline = ["cat /auth.txt"]
  }}
}}
"#
        )
    };
    let (outcome, _) = try_build(&pulling("")).await;
    assert!(!outcome.ok);
    let error = outcome.error.join(": ");
    assert!(
        error.contains(&format!("cannot pull image `{name}`")),
        "{error}"
    );
    let (outcome, messages) = build(&pulling(&login)).await;
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with(&format!("pull {name}: "))),
        "{messages:?}"
    );
    assert_eq!(outcome.artifacts[0].id, image);
    assert_eq!(inspect_image(&name)["Id"], image.as_str());
}
