//! The docker builder against a real engine: templates are planned and run by the runner with
//! the `shell` and `file` provisioners, then the produced image is run and inspected.

use std::path::PathBuf;

use sha2::Digest;

use bollard::models::ContainerCreateBody;
use kiln_core::event::{EventKind, EventSink, Redactor};
use kiln_core::runner::{run_plan, OnError, RunOptions};
use kiln_testkit::docker::{
    busybox_image, debian_image, engine, has_image, inspect_image, push_image, registry,
    remove_image, tag_image, RemoveOnDrop,
};

mod support;

use support::{
    artifact_id, assert_no_container_of, build, containers_of, docker, one_source_template,
    repo_dir, run_image, template_dir, RemoveImageOnDrop,
};

/// The image config carries nothing of the build container.
fn assert_no_build_residue(raw: &serde_json::Value) {
    let config = &raw["Config"];
    for flag in ["Tty", "OpenStdin", "StdinOnce", "AttachStdin"] {
        assert_ne!(config[flag], true, "{flag} is set: {config}");
    }
    assert_eq!(config["Hostname"].as_str().unwrap_or(""), "", "{config}");
    let command = format!("{}{}", config["Cmd"], config["Entrypoint"]);
    assert!(
        !command.contains("sleep 3600"),
        "keep-alive left in {config}"
    );
}

#[tokio::test]
async fn hello_template_image_runs_with_the_provisioned_files_and_config() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&["ENV KILN_BASE=busybox", "WORKDIR /root"]);
    let dir = repo_dir().join("templates/docker-hello");
    let (summary, _events, run_id) = build(&dir, &[("image", &base)], OnError::Cleanup).await;
    let image = artifact_id(&summary);
    assert_no_container_of(run_id);
    let docker = docker().await;

    // Its own CMD (from `changes`) prints what the `file` provisioner wrote.
    let motd = run_image(&docker, &image, None).await;
    assert!(motd.starts_with("built by docker.hello in "), "{motd}");
    let check = "cat /opt/hello/a.txt /opt/hello/greeting; stat -c %u /opt/hello/greeting; \
                 echo \"$GREETING $KILN_BASE\"; pwd; ls -a /packer-files 2>&1 | head -1";
    let inside = run_image(&docker, &image, Some(&["sh", "-c", check])).await;
    assert_eq!(
        inside,
        "hello from a file\nhello\n1234\nhello busybox\n/root\n\
         ls: /packer-files: No such file or directory\n"
    );

    let inspect = docker.inspect_image(&image).await.unwrap();
    let config = inspect.config.unwrap();
    assert_eq!(
        config.cmd,
        Some(vec!["cat".to_string(), "/etc/motd".to_string()])
    );
    assert!(config.entrypoint.unwrap_or_default().is_empty());
    let env = config.env.unwrap();
    assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");
    assert!(env.contains(&"KILN_BASE=busybox".to_string()), "{env:?}");
    assert_eq!(config.working_dir.as_deref(), Some("/root"));
    assert_eq!(
        config.labels.unwrap()["org.opencontainers.image.title"],
        "kiln-hello"
    );
    assert_no_build_residue(&inspect_image(&image));
    remove_image(&image);
}

#[tokio::test]
async fn base_entrypoint_cmd_and_user_survive_and_provisioning_runs_as_that_user() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[
        "ENTRYPOINT [\"/bin/echo\", \"from-entrypoint\"]",
        "CMD [\"from-cmd\"]",
        "USER nobody",
        "WORKDIR /tmp",
    ]);
    let dir = template_dir(&format!(
        r#"
source "docker" "user" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.user"]
  provisioner "shell" {{
    inline = ["id -u > /tmp/who"]
  }}
}}
"#
    ));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    let image = artifact_id(&summary);
    assert_no_container_of(run_id);
    let docker = docker().await;
    assert_eq!(
        run_image(&docker, &image, None).await,
        "from-entrypoint from-cmd\n"
    );
    let config = docker.inspect_image(&image).await.unwrap().config.unwrap();
    assert_eq!(
        config.entrypoint,
        Some(vec!["/bin/echo".to_string(), "from-entrypoint".to_string()])
    );
    assert_eq!(config.user.as_deref(), Some("nobody"));
    assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
    // The shell provisioner ran as the image's user.
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: Some(vec!["cat".to_string(), "/tmp/who".to_string()]),
        ..ContainerCreateBody::default()
    };
    let who = support::run(&docker, body).await;
    assert_eq!(who, "65534\n");
    remove_image(&image);
}

fn failing_template(base: &str) -> tempfile::TempDir {
    template_dir(&format!(
        r#"
source "docker" "fails" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.fails"]
  provisioner "shell" {{
    inline = ["exit 7"]
  }}
}}
"#
    ))
}

#[tokio::test]
async fn a_failing_provisioner_leaves_no_container() {
    if engine().is_none() {
        return;
    }
    let dir = failing_template(&busybox_image(&[]));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert!(!summary.ok());
    assert!(
        summary.builds[0].error.join(": ").contains('7'),
        "{:?}",
        summary.builds[0].error
    );
    assert_no_container_of(run_id);
}

#[tokio::test]
async fn on_error_abort_keeps_the_container_and_reports_it() {
    if engine().is_none() {
        return;
    }
    let dir = failing_template(&busybox_image(&[]));
    let (summary, events, run_id) = build(dir.path(), &[], OnError::Abort).await;
    assert!(!summary.ok());
    let kept = containers_of(run_id);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let _guard = RemoveOnDrop(kept[0].clone());
    // The report names the kept container by its full id, as the engine knows it.
    let id = docker()
        .await
        .inspect_container(&kept[0], None)
        .await
        .unwrap()
        .id
        .unwrap();
    let leftovers: Vec<(&String, Option<&String>)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Leftover { what, how_to_reach } => Some((what, how_to_reach.as_ref())),
            _ => None,
        })
        .collect();
    assert_eq!(leftovers.len(), 1, "{events:?}");
    let (what, how) = leftovers[0];
    assert_eq!(what, &format!("docker container {id}"));
    assert_eq!(how, Some(&format!("docker exec -it {id} /bin/sh")));
}

/// The texts of the run's messages.
fn messages(events: &[EventKind]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn pull_true_pulls_an_image_the_engine_does_not_have() {
    if engine().is_none() {
        return;
    }
    let Some(reg) = registry() else { return };
    // An image of this test's own, so that removing it takes nothing from other tests: pushed
    // to the registry, then removed from the engine.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let local = busybox_image(&[&format!("LABEL kiln.test.pull={unique}")]);
    let base_id = inspect_image(&local)["Id"].as_str().unwrap().to_string();
    let _base = RemoveImageOnDrop(base_id.clone());
    let repo = format!("{}/kiln/pull", reg.host());
    let remote = format!("{repo}:{unique}");
    tag_image(&local, &repo, &unique);
    push_image(&repo, &unique);
    remove_image(&remote);
    remove_image(&local);
    assert!(!has_image(&base_id), "{base_id} is still present");

    let dir = one_source_template(
        "pulled",
        &remote,
        "pull = true",
        "provisioner \"shell\" {\n    inline = [\"echo pulled > /pulled.txt\"]\n  }",
    );
    let (summary, events, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    let image = artifact_id(&summary);
    let _image = RemoveImageOnDrop(image.clone());
    assert_no_container_of(run_id);
    let pulls: Vec<&str> = messages(&events)
        .into_iter()
        .filter(|m| m.starts_with(&format!("pull {remote}: ")))
        .collect();
    assert!(!pulls.is_empty(), "no pull reported: {events:?}");
    // The engine has the base again, under its name, and the build is made from it.
    assert_eq!(inspect_image(&remote)["Id"], base_id.as_str());
    assert_eq!(
        summary.builds[0].artifacts[0].data["BaseImageId"],
        base_id.as_str()
    );
    let docker = docker().await;
    let inside = "cat /pulled.txt";
    assert_eq!(
        run_image(&docker, &image, Some(&["sh", "-c", inside])).await,
        "pulled\n"
    );
    assert_eq!(
        inspect_image(&image)["Config"]["Labels"]["kiln.test.pull"],
        unique.as_str()
    );
}

#[tokio::test]
async fn discard_leaves_no_image_and_its_artifact_is_the_base_image() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[]);
    let base_id = inspect_image(&base)["Id"].as_str().unwrap().to_string();
    // Were the container committed after all, the image would carry this label.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let dir = template_dir(&format!(
        r#"
source "docker" "thrown" {{
  image   = "{base}"
  discard = true
  changes = ["LABEL kiln.test.discard={unique}"]
}}
build {{
  sources = ["source.docker.thrown"]
  provisioner "shell" {{
    inline = ["echo provisioned > /provisioned.txt", "cat /provisioned.txt"]
  }}
}}
"#
    ));
    let (summary, events, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    // The provisioner ran in the container that was then thrown away.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::Output { line, .. } if line == "provisioned")),
        "{events:?}"
    );
    let artifact = &summary.builds[0].artifacts[0];
    assert_eq!(artifact_id(&summary), base_id);
    assert!(artifact.files.is_empty(), "{artifact:?}");
    assert_eq!(artifact.data["BaseImageId"], base_id.as_str());
    assert_eq!(artifact.data["BaseImage"], base.as_str());
    assert!(artifact.data.get("ImageId").is_none(), "{artifact:?}");
    assert!(!messages(&events)
        .iter()
        .any(|m| m.starts_with("committed image")));
    assert_no_container_of(run_id);
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("kiln.test.discard={unique}")],
    )]);
    let options = bollard::query_parameters::ListImagesOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let images = docker().await.list_images(Some(options)).await.unwrap();
    assert!(images.is_empty(), "discard left images: {images:?}");
}

#[tokio::test]
async fn export_path_writes_the_filesystem_and_pull_false_needs_a_local_image() {
    if engine().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let tar_path = out.path().join("fs.tar");
    let dir = template_dir(&format!(
        r#"
source "docker" "export" {{
  image       = "{base}"
  export_path = "{path}"
}}
source "docker" "missing" {{
  image   = "kiln-test/does-not-exist:1"
  pull    = false
  discard = true
}}
build {{
  sources = ["source.docker.export", "source.docker.missing"]
  provisioner "shell" {{
    inline = ["echo exported > /exported.txt"]
  }}
}}
"#,
        base = busybox_image(&[]),
        path = tar_path.display()
    ));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let export = summary
        .builds
        .iter()
        .find(|b| b.name.ends_with("export"))
        .unwrap();
    assert!(export.ok, "{:?}", export.error);
    let file = &export.artifacts[0].files[0];
    assert_eq!(file.path, tar_path);
    assert_eq!(file.size, std::fs::metadata(&tar_path).unwrap().len());
    let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"exported.txt".to_string()), "{names:?}");
    assert!(names.contains(&"bin/busybox".to_string()));

    let missing = summary
        .builds
        .iter()
        .find(|b| b.name.ends_with("missing"))
        .unwrap();
    let error = missing.error.join(": ");
    assert!(error.contains("not present locally"), "{error}");
}

#[tokio::test]
async fn reproducible_builds_give_the_same_image_id() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&["ENV KILN_BASE=busybox", "CMD [\"/bin/sh\"]"]);
    let dir = template_dir(&format!(
        r#"
source "docker" "repro" {{
  image        = "{base}"
  commit       = true
  reproducible = true
  changes      = ["LABEL kiln.test=repro", "CMD [\"cat\", \"/opt/repro/data\"]"]
}}
build {{
  sources = ["source.docker.repro"]
  provisioner "shell" {{
    inline = [
      "mkdir -p /opt/repro && echo data > /opt/repro/data",
      "chown 999:999 /opt/repro/data",
      "rm /bin/vi",
    ]
  }}
}}
"#
    ));
    let (first, _, run1) = build(dir.path(), &[], OnError::Cleanup).await;
    let (second, _, run2) = build(dir.path(), &[], OnError::Cleanup).await;
    let (a, b) = (artifact_id(&first), artifact_id(&second));
    assert_eq!(a, b, "two reproducible builds differ");
    assert_no_container_of(run1);
    assert_no_container_of(run2);

    let docker = docker().await;
    assert_eq!(run_image(&docker, &a, None).await, "data\n");
    let check = "stat -c '%u:%g' /opt/repro/data; test -e /bin/vi || echo vi-gone; echo $KILN_BASE";
    assert_eq!(
        run_image(&docker, &a, Some(&["sh", "-c", check])).await,
        "999:999\nvi-gone\nbusybox\n"
    );
    let inspect = docker.inspect_image(&a).await.unwrap();
    let config = inspect.config.unwrap();
    assert_eq!(config.labels.unwrap()["kiln.test"], "repro");
    assert!(config
        .env
        .unwrap()
        .contains(&"KILN_BASE=busybox".to_string()));
    let raw = inspect_image(&a);
    assert_eq!(raw["Created"], "1970-01-01T00:00:00Z");
    assert_no_build_residue(&raw);
    remove_image(&a);
}

#[tokio::test]
async fn debian_builds_with_a_new_user_are_reproducible() {
    if engine().is_none() {
        return;
    }
    let base = debian_image(&repo_dir());
    let dir = template_dir(&format!(
        r#"
source "docker" "debian" {{
  image        = "{base}"
  commit       = true
  reproducible = true
}}
build {{
  sources = ["source.docker.debian"]
  provisioner "shell" {{
    environment_vars = ["SOURCE_DATE_EPOCH=0"]
    inline = [
      "useradd --create-home --uid 1500 app",
      "echo hello > /home/app/hello",
      "chown app:app /home/app/hello",
    ]
  }}
}}
"#
    ));
    let (first, _, _) = build(dir.path(), &[], OnError::Cleanup).await;
    let (second, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    let (a, b) = (artifact_id(&first), artifact_id(&second));
    assert_eq!(a, b, "two reproducible Debian builds differ");
    assert_no_container_of(run_id);
    let docker = docker().await;
    let check = "id app; stat -c %U /home/app/hello; cat /home/app/hello";
    assert_eq!(
        run_image(&docker, &a, Some(&["sh", "-c", check])).await,
        "uid=1500(app) gid=1500(app) groups=1500(app)\napp\nhello\n"
    );
    remove_image(&a);
}

#[tokio::test]
async fn an_interrupted_build_removes_its_container() {
    if engine().is_none() {
        return;
    }
    let dir = template_dir(&format!(
        r#"
source "docker" "slow" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.slow"]
  provisioner "shell" {{
    inline = ["echo started", "sleep 600"]
  }}
}}
"#,
        base = busybox_image(&[])
    ));
    let (plan, registry) = support::plan(dir.path(), &[]);
    let run_id = uuid::Uuid::new_v4();
    let (sink, mut rx) = EventSink::channel(run_id, Redactor::default());
    let cancel = kiln_core::runner::Cancel::new();
    let options = RunOptions {
        cancel: cancel.clone(),
        ..RunOptions::default()
    };
    let run = tokio::spawn(async move { run_plan(&plan, &registry, options, sink).await });
    // Interrupt once the provisioner runs inside the container.
    while let Some(event) = rx.recv().await {
        if matches!(&event.kind, EventKind::Output { line, .. } if line == "started") {
            break;
        }
    }
    assert_eq!(containers_of(run_id).len(), 1);
    cancel.cancel.cancel();
    let summary = run.await.unwrap();
    assert!(summary.cancelled || !summary.ok());
    assert_no_container_of(run_id);
}

#[tokio::test]
async fn reproducible_output_can_also_be_an_oci_layout() {
    if engine().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let dir = template_dir(&format!(
        r#"
source "docker" "oci" {{
  image        = "{base}"
  commit       = true
  reproducible = true
  oci_layout   = "{layout}"
}}
build {{
  sources = ["source.docker.oci"]
  provisioner "shell" {{
    inline = ["echo oci > /oci.txt"]
  }}
}}
"#,
        base = busybox_image(&[]),
        layout = layout.display()
    ));
    let (summary, _, _) = build(dir.path(), &[], OnError::Cleanup).await;
    let image = artifact_id(&summary);
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        let path = layout
            .join("blobs/sha256")
            .join(digest.as_str().unwrap().trim_start_matches("sha256:"));
        let bytes = std::fs::read(&path).unwrap();
        let actual = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        assert_eq!(&actual, digest.as_str().unwrap(), "{}", path.display());
        bytes
    };
    let index = read_json(layout.join("index.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
    // The config blob is the image the engine has: same digest, same id.
    assert_eq!(manifest["config"]["digest"], image.as_str());
    let config: serde_json::Value =
        serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
    // Nothing of the build container: no container id, its config or hostname.
    for key in ["container", "container_config"] {
        assert!(
            config.get(key).is_none_or(|v| v.is_null() || v == ""),
            "{key} in {config}"
        );
    }
    assert_eq!(config["config"]["Hostname"].as_str().unwrap_or(""), "");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (layer, diff_id) in layers
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        assert_eq!(&layer["digest"], diff_id);
        blob(&layer["digest"]);
    }
    assert!(std::fs::read_to_string(layout.join("oci-layout"))
        .unwrap()
        .contains("1.0.0"));
    remove_image(&image);
}
