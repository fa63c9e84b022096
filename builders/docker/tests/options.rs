//! The docker builder's options against a real engine, each checked through what the engine
//! reports (`docker inspect` of the image or of the build container) or through what the
//! committed image holds when it is run: capabilities, `privileged`, `volumes`, `platform`,
//! every `changes` instruction, `author` and `message`, `run_command`, upload ownership and
//! `container_dir`, and every provisioner through the docker communicator.

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use kiln_core::event::EventKind;
use kiln_core::runner::{BuildOutcome, OnError, RunSummary};
use kiln_testkit::docker::{busybox_image, engine, inspect_image, RemoveOnDrop};

mod support;

use support::{
    artifact_id, assert_no_container_of, build, containers_of, docker, one_source_template,
    run_image, run_script, template_dir, RemoveImageOnDrop,
};

/// The outcome of the build of `source` (the source's name).
fn outcome_of<'s>(summary: &'s RunSummary, source: &str) -> &'s BuildOutcome {
    summary
        .builds
        .iter()
        .find(|b| b.name.ends_with(&format!(".{source}")))
        .unwrap_or_else(|| panic!("no build of {source}: {:?}", summary.builds))
}

/// The image the build of `source` committed, removed when dropped.
fn image_of(summary: &RunSummary, source: &str) -> RemoveImageOnDrop {
    let outcome = outcome_of(summary, source);
    assert!(outcome.ok, "{source}: {:?}", outcome.error);
    RemoveImageOnDrop(outcome.artifacts[0].id.clone())
}

/// The error chain of the build of `source`, which must have failed.
fn error_of(summary: &RunSummary, source: &str) -> String {
    let outcome = outcome_of(summary, source);
    assert!(!outcome.ok, "{source} built");
    outcome.error.join(": ")
}

/// Capability numbers (`linux/capability.h`).
const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Records, in the image, the effective capabilities provisioning ran with (`/caps`, hex) and
/// whether it could mount a tmpfs (`/mounted`), which takes `CAP_SYS_ADMIN`.
const CAPS_PROVISIONER: &str = r#"
  provisioner "shell" {
    inline = [
      "grep CapEff /proc/self/status | cut -f2 > /caps",
      "if mount -t tmpfs none /mnt 2>/dev/null; then umount /mnt; echo yes; else echo no; fi > /mounted",
    ]
  }
"#;

/// The capability set and the mount result the image's provisioning recorded.
async fn recorded_caps(docker: &Docker, image: &str) -> (u64, String) {
    let out = run_script(docker, image, "cat /caps /mounted").await;
    let (caps, mounted) = out.split_once('\n').unwrap_or_else(|| panic!("{out:?}"));
    let caps = u64::from_str_radix(caps.trim(), 16).unwrap_or_else(|e| panic!("{caps}: {e}"));
    (caps, mounted.trim().to_string())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

#[tokio::test]
async fn cap_add_and_cap_drop_change_what_provisioning_may_do() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[]);
    let dir = template_dir(&format!(
        r#"
source "docker" "default" {{
  image  = "{base}"
  commit = true
}}
source "docker" "caps" {{
  image    = "{base}"
  commit   = true
  cap_add  = ["NET_ADMIN"]
  cap_drop = ["CHOWN"]
}}
build {{
  sources = ["source.docker.default", "source.docker.caps"]
  {CAPS_PROVISIONER}
}}
"#
    ));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let docker = docker().await;

    let default = image_of(&summary, "default");
    let (caps, mounted) = recorded_caps(&docker, &default.0).await;
    assert!(has(caps, CAP_CHOWN), "{caps:x}");
    assert!(!has(caps, CAP_NET_ADMIN), "{caps:x}");
    assert!(
        !has(caps, CAP_SYS_ADMIN),
        "not privileged by default: {caps:x}"
    );
    assert_eq!(mounted, "no");

    let changed = image_of(&summary, "caps");
    let (caps, mounted) = recorded_caps(&docker, &changed.0).await;
    assert!(has(caps, CAP_NET_ADMIN), "{caps:x}");
    assert!(!has(caps, CAP_CHOWN), "{caps:x}");
    assert!(!has(caps, CAP_SYS_ADMIN), "{caps:x}");
    assert_eq!(mounted, "no");
}

/// Whether the engine can start a privileged container at all: an engine that itself runs
/// without every capability (in a container, or confined) cannot give them all.
async fn engine_runs_privileged_containers(docker: &Docker, image: &str) -> Result<(), String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["true".to_string()]),
        host_config: Some(bollard::models::HostConfig {
            privileged: Some(true),
            ..Default::default()
        }),
        ..ContainerCreateBody::default()
    };
    let (_guard, started) = support::start(docker, body).await;
    started.map_err(|e| e.to_string())
}

#[tokio::test]
async fn privileged_runs_the_build_container_privileged() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[]);
    let docker = docker().await;
    let dir = one_source_template("privileged", &base, "privileged = true", CAPS_PROVISIONER);
    match engine_runs_privileged_containers(&docker, &base).await {
        Ok(()) => {
            let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
            assert_no_container_of(run_id);
            let image = image_of(&summary, "privileged");
            let (caps, mounted) = recorded_caps(&docker, &image.0).await;
            assert!(has(caps, CAP_SYS_ADMIN), "{caps:x}");
            assert_eq!(mounted, "yes");
        }
        Err(refusal) => {
            // This engine cannot start any privileged container; the build fails the same way,
            // and the container it kept (`-on-error=abort`) shows the engine got the setting.
            eprintln!("note: the engine starts no privileged container ({refusal})");
            let (summary, _, run_id) = build(dir.path(), &[], OnError::Abort).await;
            let error = error_of(&summary, "privileged");
            assert!(error.contains("cannot start container"), "{error}");
            let kept = containers_of(run_id);
            assert_eq!(kept.len(), 1, "{kept:?}");
            let _guard = RemoveOnDrop(kept[0].clone());
            let inspect = docker
                .inspect_container(&kept[0], None::<InspectContainerOptions>)
                .await
                .unwrap();
            assert_eq!(inspect.host_config.unwrap().privileged, Some(true));
        }
    }
}

#[tokio::test]
async fn volumes_are_bound_during_the_build_and_stay_out_of_the_image() {
    if engine().is_none() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    let dir = one_source_template(
        "volumes",
        &busybox_image(&[]),
        &format!("volumes = {{ \"{}\" = \"/data\" }}", host.path().display()),
        r#"provisioner "shell" {
    inline = [
      "cp /data/in.txt /copied.txt",
      "echo from the container > /data/out.txt",
    ]
  }"#,
    );
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let image = image_of(&summary, "volumes");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "from the container\n"
    );
    let docker = docker().await;
    let inside = run_script(
        &docker,
        &image.0,
        "cat /copied.txt; ls -A /data 2>&1; echo end",
    )
    .await;
    assert_eq!(inside, "from the host\nend\n");
}

#[tokio::test]
async fn the_engine_platform_builds_and_one_the_local_image_lacks_is_a_clear_error() {
    if engine().is_none() {
        return;
    }
    let docker = docker().await;
    let version = docker.version().await.unwrap();
    let (os, arch) = (version.os.unwrap(), version.arch.unwrap());
    let native = format!("{os}/{arch}");
    let foreign = if arch == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let base = busybox_image(&[]);
    let dir = template_dir(&format!(
        r#"
source "docker" "native" {{
  image    = "{base}"
  commit   = true
  platform = "{native}"
}}
source "docker" "foreign" {{
  image    = "{base}"
  commit   = true
  pull     = false
  platform = "{foreign}"
}}
build {{
  sources = ["source.docker.native", "source.docker.foreign"]
  provisioner "shell" {{
    inline = ["uname -m > /machine"]
  }}
}}
"#
    ));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let image = image_of(&summary, "native");
    let raw = inspect_image(&image.0);
    assert_eq!(raw["Os"], os.as_str());
    assert_eq!(raw["Architecture"], arch.as_str());
    assert!(!run_script(&docker, &image.0, "cat /machine")
        .await
        .is_empty());

    let error = error_of(&summary, "foreign");
    assert!(
        error.contains(&format!(
            "image `{base}` is present locally for `{native}`, not for the platform \
             `{foreign}`, and `pull` is false"
        )),
        "{error}"
    );
}

#[tokio::test]
async fn every_change_instruction_author_and_message_reach_the_committed_image() {
    if engine().is_none() {
        return;
    }
    let attrs = r#"
  author  = "Kiln Tests <kiln@example.com>"
  message = "built by the options test"
  changes = [
    "LABEL kiln.test=changes",
    "ENV CHANGED=yes",
    "ENTRYPOINT [\"/bin/sh\", \"-c\"]",
    "CMD [\"echo $CHANGED $(id -u) $(pwd)\"]",
    "EXPOSE 8080/tcp",
    "USER nobody",
    "WORKDIR /srv",
    "VOLUME /cache",
    "ONBUILD RUN echo child",
  ]"#;
    let base = busybox_image(&["CMD [\"/bin/false\"]"]);
    let body = r#"provisioner "shell" { inline = ["mkdir -p /srv"] }"#;
    let dir = one_source_template("changes", &base, attrs, body);
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let image = image_of(&summary, "changes");
    let raw = inspect_image(&image.0);
    let config = &raw["Config"];
    assert_eq!(config["Labels"]["kiln.test"], "changes", "{config}");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"CHANGED=yes"), "{env:?}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["echo $CHANGED $(id -u) $(pwd)"])
    );
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["WorkingDir"], "/srv");
    assert!(config["Volumes"].get("/cache").is_some(), "{config}");
    assert_eq!(config["OnBuild"], serde_json::json!(["RUN echo child"]));
    assert_eq!(raw["Author"], "Kiln Tests <kiln@example.com>");
    assert_eq!(raw["Comment"], "built by the options test");

    // Run as it is: ENTRYPOINT, CMD, ENV, USER and WORKDIR together.
    let docker = docker().await;
    assert_eq!(run_image(&docker, &image.0, None).await, "yes 65534 /srv\n");
}

#[tokio::test]
async fn run_command_is_the_build_container_s_process_and_not_the_image_s() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[
        "ENTRYPOINT [\"/bin/echo\", \"base-entrypoint\"]",
        "CMD [\"base-cmd\"]",
    ]);
    let attrs =
        r#"run_command = ["/bin/sh", "-c", "while :; do sleep 1000; done # kiln-run-command"]"#;
    let body = r#"provisioner "shell" { inline = ["tr '\\0' ' ' < /proc/1/cmdline > /pid1"] }"#;
    let dir = one_source_template("run", &base, attrs, body);
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let image = image_of(&summary, "run");
    let docker = docker().await;
    assert_eq!(
        run_script(&docker, &image.0, "cat /pid1").await,
        "/bin/sh -c while :; do sleep 1000; done # kiln-run-command "
    );
    // The image runs the base's ENTRYPOINT and CMD, not the keep-alive.
    assert_eq!(
        run_image(&docker, &image.0, None).await,
        "base-entrypoint base-cmd\n"
    );
    let config = &inspect_image(&image.0)["Config"];
    assert!(!config.to_string().contains("kiln-run-command"), "{config}");
}

#[tokio::test]
async fn uploads_belong_to_the_user_commands_run_as_unless_fix_upload_owner_is_false() {
    if engine().is_none() {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("tree")).unwrap();
    std::fs::write(files.path().join("tree/x.txt"), "x\n").unwrap();
    let dir = template_dir(&format!(
        r#"
source "docker" "owned" {{
  image         = "{base}"
  commit        = true
  container_dir = "/kiln-uploads"
}}
source "docker" "unowned" {{
  image            = "{base}"
  commit           = true
  fix_upload_owner = false
}}
source "docker" "exec_user" {{
  image     = "{base}"
  commit    = true
  exec_user = "1234:1234"
}}
build {{
  sources = ["source.docker.owned", "source.docker.unowned", "source.docker.exec_user"]
  provisioner "file" {{
    content     = "uploaded\n"
    destination = "/tmp/uploaded"
  }}
  provisioner "file" {{
    source      = "{tree}"
    destination = "/tmp"
  }}
  # Not for `unowned`: its user could not remove the script it was given (owned by root, in
  # the sticky /tmp), which fails the provisioner.
  provisioner "shell" {{
    only   = ["docker.owned", "docker.exec_user"]
    inline = ["id -u > /tmp/who"]
  }}
}}
"#,
        base = busybox_image(&["USER nobody"]),
        tree = files.path().join("tree").display()
    ));
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let docker = docker().await;
    let check = "cat /tmp/who 2>/dev/null; stat -c %u:%g /tmp/uploaded /tmp/tree /tmp/tree/x.txt; \
                 if test -e /kiln-uploads; then echo container_dir-left; fi";
    let owners = |owner: &str| format!("{owner}\n{owner}\n{owner}\n");

    // A user name without a group gives the uid only, as Packer's `chown -R USER` does.
    let owned = image_of(&summary, "owned");
    assert_eq!(
        run_script(&docker, &owned.0, check).await,
        format!("65534\n{}", owners("65534:0"))
    );
    let unowned = image_of(&summary, "unowned");
    assert_eq!(run_script(&docker, &unowned.0, check).await, owners("0:0"));
    let exec_user = image_of(&summary, "exec_user");
    assert_eq!(
        run_script(&docker, &exec_user.0, check).await,
        format!("1234\n{}", owners("1234:1234"))
    );
}

/// The breakpoint provisioner pauses when stdin is a terminal; the suite's stdin must not be
/// one (a developer may run it from a shell), so it becomes `/dev/null` for this process.
fn stdin_from_dev_null() {
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup2(2) on two open descriptors; nothing in the test process reads stdin.
    let done = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn every_provisioner_runs_through_the_docker_communicator() {
    if engine().is_none() {
        return;
    }
    stdin_from_dev_null();
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(local.path().join("tree/sub")).unwrap();
    std::fs::write(local.path().join("tree/sub/up.txt"), "uploaded\n").unwrap();
    let downloaded = local.path().join("downloaded");
    let body = format!(
        r#"
  provisioner "file" {{
    source      = "{local}/tree"
    destination = "/opt"
  }}
  provisioner "shell" {{
    inline = [
      "mkdir -p /var/out/sub",
      "cat /opt/tree/sub/up.txt > /var/out/sub/copied.txt",
      "echo made inside > /var/out/made.txt",
      "ln -s made.txt /var/out/link",
      "hostname > /var/out/hostname",
    ]
  }}
  provisioner "file" {{
    direction   = "download"
    source      = "/var/out/"
    destination = "{downloaded}"
  }}
  provisioner "shell-local" {{
    inline = ["echo \"${{build.ID}} ${{build.ConnType}} $PACKER_BUILDER_TYPE $PACKER_BUILD_NAME\" > {local}/local.txt"]
  }}
  provisioner "breakpoint" {{
    note = "look around"
  }}
"#,
        local = local.path().display(),
        downloaded = downloaded.display()
    );
    let dir = one_source_template("all", &busybox_image(&[]), "", &body);
    let (summary, events, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    let image = RemoveImageOnDrop(artifact_id(&summary));
    assert_no_container_of(run_id);

    // Uploaded as a directory, downloaded as one, symlink included.
    let read = |path: &str| std::fs::read_to_string(downloaded.join(path)).unwrap();
    assert_eq!(read("sub/copied.txt"), "uploaded\n");
    assert_eq!(read("made.txt"), "made inside\n");
    assert_eq!(
        std::fs::read_link(downloaded.join("link")).unwrap(),
        std::path::Path::new("made.txt")
    );
    // shell-local saw the build's variables: `build.ID` is the container's id, which the
    // engine also made its hostname.
    let local_txt = std::fs::read_to_string(local.path().join("local.txt")).unwrap();
    let fields: Vec<&str> = local_txt.split_whitespace().collect();
    let hostname = read("hostname");
    assert_eq!(fields.len(), 4, "{local_txt}");
    assert_eq!(fields[0].len(), 64, "{local_txt}");
    assert!(
        fields[0].starts_with(hostname.trim()),
        "{local_txt} {hostname}"
    );
    assert_eq!(&fields[1..], ["docker", "docker", "all"]);
    let skipped = events.iter().any(|e| {
        matches!(e, EventKind::Message { text, .. }
            if text == "skipping breakpoint: look around (stdin is not a terminal)")
    });
    assert!(skipped, "{events:?}");

    let docker = docker().await;
    assert_eq!(
        run_script(
            &docker,
            &image.0,
            "cat /opt/tree/sub/up.txt /var/out/made.txt"
        )
        .await,
        "uploaded\nmade inside\n"
    );
}

#[tokio::test]
async fn ansible_through_the_docker_communicator_is_a_clear_error() {
    if engine().is_none() {
        return;
    }
    let body = r#"provisioner "ansible" { playbook_file = "${path.root}/playbook.yml" }"#;
    let dir = one_source_template("ansible", &busybox_image(&[]), "", body);
    std::fs::write(
        dir.path().join("playbook.yml"),
        "- hosts: all\n  tasks: []\n",
    )
    .unwrap();
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    let error = error_of(&summary, "ansible");
    assert!(
        error.contains(
            "the ansible provisioner needs the ssh communicator, but this build uses `docker`"
        ),
        "{error}"
    );
}
