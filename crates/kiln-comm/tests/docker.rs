//! The docker communicator against a real engine and a busybox container: exec, uploads and
//! downloads through the archive endpoints, owners and modes.

use std::path::Path;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptions;
use bollard::Docker;
use kiln_comm::docker::DockerCommunicator;
use kiln_comm::{
    CommError, Communicator, ExitStatus, RemoteCommand, Stream, UploadOptions, UploadSource,
};
use kiln_testkit::docker::{busybox_image, engine, RemoveOnDrop};

/// A running busybox container and a communicator into it; removed on drop.
struct Box_ {
    docker: Docker,
    comm: DockerCommunicator,
    _guard: RemoveOnDrop,
}

async fn container() -> Option<Box_> {
    engine()?;
    let image = busybox_image(&["CMD [\"/bin/sh\"]"]);
    let docker = Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let body = ContainerCreateBody {
        image: Some(image),
        cmd: Some(vec!["sleep".to_string(), "3600".to_string()]),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .unwrap();
    let guard = RemoveOnDrop(created.id.clone());
    docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    Some(Box_ {
        comm: DockerCommunicator::new(docker.clone(), created.id),
        docker,
        _guard: guard,
    })
}

async fn run(comm: &dyn Communicator, command: &str) -> (ExitStatus, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let cmd = RemoteCommand {
        command: command.to_string(),
        ..RemoteCommand::default()
    };
    let status = comm
        .exec(&cmd, &mut |s: Stream, l: &str| {
            lines.push((s, l.to_string()))
        })
        .await
        .unwrap();
    (status, lines)
}

async fn stdout(comm: &dyn Communicator, command: &str) -> String {
    let (status, lines) = run(comm, command).await;
    assert!(status.success(), "{command}: {status:?} {lines:?}");
    lines
        .into_iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l + "\n")
        .collect()
}

#[tokio::test]
async fn exec_streams_output_and_reports_the_exit_code() {
    let Some(c) = container().await else { return };
    let (status, mut lines) = run(&c.comm, "echo out; echo err >&2; exit 3").await;
    assert_eq!(status, ExitStatus::Code(3));
    // The engine does not order lines across the two streams.
    lines.sort_by_key(|(stream, _)| *stream == Stream::Stderr);
    assert_eq!(
        lines,
        [
            (Stream::Stdout, "out".to_string()),
            (Stream::Stderr, "err".to_string())
        ]
    );
    let cmd = RemoteCommand {
        command: "echo \"$GREETING\"; pwd".to_string(),
        env: vec![("GREETING".to_string(), "hello world".to_string())],
        workdir: Some("/tmp".to_string()),
        pty: false,
    };
    let mut seen = Vec::new();
    let status = c
        .comm
        .exec(&cmd, &mut |_: Stream, l: &str| seen.push(l.to_string()))
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(seen, ["hello world", "/tmp"]);
}

#[tokio::test]
async fn uploads_keep_mode_and_owner_and_create_parents() {
    let Some(c) = container().await else { return };
    let opts = UploadOptions {
        mode: Some(0o750),
        owner: Some("nobody".to_string()),
    };
    c.comm
        .upload(
            UploadSource::Bytes(b"#!/bin/sh\necho hi\n".to_vec()),
            "/opt/new/dir/script.sh",
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(
        stdout(
            &c.comm,
            "stat -c '%a %U' /opt/new/dir/script.sh; /opt/new/dir/script.sh"
        )
        .await,
        "750 nobody\nhi\n"
    );

    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), "from a file\n").unwrap();
    c.comm
        .upload(
            UploadSource::File(local.path().to_owned()),
            "/tmp/file.txt",
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        stdout(
            &c.comm,
            "stat -c '%a %u:%g' /tmp/file.txt; cat /tmp/file.txt"
        )
        .await,
        "644 0:0\nfrom a file\n"
    );
}

/// A file uploaded onto a directory is refused and the directory is kept, as over SSH (where
/// `cat > dir` fails): `upload` writes the path it is given, it never puts the file into a
/// directory there (callers such as the `file` provisioner name `dir/<name>` themselves).
#[tokio::test]
async fn uploads_onto_an_existing_directory_keep_it() {
    let Some(c) = container().await else { return };
    stdout(
        &c.comm,
        "mkdir -p /srv/dir && echo old > /srv/dir/old.txt && ln -s /srv/dir /srv/link",
    )
    .await;
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("new.txt");
    std::fs::write(&file, "new\n").unwrap();
    let opts = UploadOptions {
        mode: Some(0o600),
        owner: Some("nobody".to_string()),
    };

    for dest in ["/srv/dir", "/srv/dir/", "/srv/link"] {
        let err = c
            .comm
            .upload(UploadSource::File(file.clone()), dest, &opts)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommError::Remote(m) if m.contains(&format!("`{dest}`"))),
            "{dest}: {err:?}"
        );
    }
    assert_eq!(
        stdout(
            &c.comm,
            "stat -c '%F %a %U' /srv/dir; readlink /srv/link; cat /srv/dir/old.txt; \
             ls -A /srv/dir; ls /srv"
        )
        .await,
        "directory 755 root\n/srv/dir\nold\nold.txt\ndir\nlink\n"
    );

    // A trailing `/` names a directory even when there is none yet; nothing is created.
    let err = c
        .comm
        .upload(UploadSource::File(file.clone()), "/srv/new/", &opts)
        .await
        .unwrap_err();
    assert!(matches!(&err, CommError::Remote(_)), "{err:?}");

    // Naming the file inside the directory is how to put it there.
    c.comm
        .upload(UploadSource::File(file.clone()), "/srv/dir/new.txt", &opts)
        .await
        .unwrap();
    assert_eq!(
        stdout(
            &c.comm,
            "ls -A /srv/dir; stat -c '%a %U' /srv/dir/new.txt; cat /srv/dir/new.txt /srv/dir/old.txt"
        )
        .await,
        "new.txt\nold.txt\n600 nobody\nnew\nold\n"
    );
}

#[tokio::test]
async fn bytes_onto_an_existing_directory_fail_and_keep_it() {
    let Some(c) = container().await else { return };
    stdout(
        &c.comm,
        "mkdir -p /srv/dir && echo old > /srv/dir/old.txt && echo was > /srv/file",
    )
    .await;
    let opts = UploadOptions {
        mode: None,
        owner: Some("nobody".to_string()),
    };
    let err = c
        .comm
        .upload(UploadSource::Bytes(b"new\n".to_vec()), "/srv/dir", &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommError::Remote(m) if m.contains("`/srv/dir` is a directory")),
        "{err:?}"
    );
    // Nothing changed, owners included.
    assert_eq!(
        stdout(
            &c.comm,
            "stat -c '%F %U' /srv/dir /srv/dir/old.txt; ls -A /srv/dir; cat /srv/dir/old.txt"
        )
        .await,
        "directory root\nregular file root\nold.txt\nold\n"
    );

    // A file is still replaced by a file.
    c.comm
        .upload(UploadSource::Bytes(b"now\n".to_vec()), "/srv/file", &opts)
        .await
        .unwrap();
    assert_eq!(
        stdout(&c.comm, "stat -c '%U' /srv/file; cat /srv/file").await,
        "nobody\nnow\n"
    );
}

/// The engine is told not to put a directory where a non-directory is (nor the reverse).
#[tokio::test]
async fn directories_onto_an_existing_file_fail_and_keep_it() {
    let Some(c) = container().await else { return };
    stdout(&c.comm, "mkdir -p /srv && echo was > /srv/file").await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("inner.txt"), "inner\n").unwrap();
    let err = c
        .comm
        .upload_dir(src.path(), "/srv/file", &UploadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, CommError::Remote(_)), "{err:?}");
    assert_eq!(
        stdout(&c.comm, "stat -c '%F' /srv/file; cat /srv/file").await,
        "regular file\nwas\n"
    );
}

#[tokio::test]
async fn directories_round_trip_in_one_stream() {
    let Some(c) = container().await else { return };
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub/deeper")).unwrap();
    std::fs::write(src.path().join("top.txt"), "top\n").unwrap();
    std::fs::write(src.path().join("sub/deeper/leaf.txt"), "leaf\n").unwrap();
    std::os::unix::fs::symlink("top.txt", src.path().join("link")).unwrap();
    c.comm
        .upload_dir(src.path(), "/srv/tree", &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        stdout(
            &c.comm,
            "cd /srv/tree && find . | sort && readlink link && cat sub/deeper/leaf.txt"
        )
        .await,
        ".\n./link\n./sub\n./sub/deeper\n./sub/deeper/leaf.txt\n./top.txt\ntop.txt\nleaf\n"
    );

    let back = tempfile::tempdir().unwrap();
    c.comm.download_dir("/srv/tree", back.path()).await.unwrap();
    let read = |p: &str| std::fs::read_to_string(back.path().join(p)).unwrap();
    assert_eq!(read("top.txt"), "top\n");
    assert_eq!(read("sub/deeper/leaf.txt"), "leaf\n");
    assert_eq!(
        std::fs::read_link(back.path().join("link")).unwrap(),
        Path::new("top.txt")
    );

    let file = back.path().join("single");
    c.comm.download("/etc/passwd", &file).await.unwrap();
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .starts_with("root:x:0:0"));
}

#[tokio::test]
async fn missing_paths_and_stopped_containers_are_reported() {
    let Some(c) = container().await else { return };
    let dest = tempfile::tempdir().unwrap();
    let err = c
        .comm
        .download("/no/such/file", &dest.path().join("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommError::Remote(m) if m.contains("/no/such/file")),
        "{err:?}"
    );
    assert!(!dest.path().join("x").exists());
    let err = c
        .comm
        .download_dir("/no/such/dir", &dest.path().join("d"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommError::Remote(m) if m.contains("/no/such/dir")),
        "{err:?}"
    );

    c.docker
        .kill_container(
            c.comm.container(),
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let cmd = RemoteCommand {
        command: "true".to_string(),
        ..RemoteCommand::default()
    };
    let err = c
        .comm
        .exec(&cmd, &mut |_: Stream, _: &str| {})
        .await
        .unwrap_err();
    assert!(matches!(err, CommError::Disconnected), "{err:?}");
}
