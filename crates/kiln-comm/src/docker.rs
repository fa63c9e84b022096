//! The docker communicator: commands through the Engine API's exec endpoints, files through its
//! archive endpoints as tar streams (a directory travels as one stream).
//!
//! Uploads are packed with numeric owner `0:0` whatever the local owner is, then given the
//! requested owner (or the communicator's upload owner, e.g. the container's user) with `chown`.
//!
//! A file upload never replaces a directory: a destination that is a directory (or a link to one)
//! is refused, as `cat > dest` refuses it over SSH, and the engine is told never to put a
//! non-directory where a directory is (nor the reverse), so a directory created meanwhile is kept
//! too.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bollard::container::{LogOutput, PathStatResponse};
use bollard::errors::Error as ApiError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    ContainerArchiveInfoOptions, DownloadFromContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use crate::{
    CommError, Communicator, ExitStatus, OutputSink, RemoteCommand, Stream, UploadOptions,
    UploadSource,
};

/// Bytes buffered between the tar (un)packer thread and the engine connection.
const PIPE_BUFFER: usize = 256 * 1024;

/// Go's `os.ModeDir` and `os.ModeSymlink`: the engine reports a path's mode as a Go `FileMode`.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

/// The way into a running container.
#[derive(Clone)]
pub struct DockerCommunicator {
    docker: Docker,
    container: String,
    /// The user commands run as; the container's own when `None`.
    user: Option<String>,
    /// Who gets uploads for which the caller asks no owner (Packer's `fix_upload_owner`);
    /// they stay `0:0` when `None`.
    upload_owner: Option<String>,
}

impl DockerCommunicator {
    /// A communicator for `container` (id or name) on the engine `docker`.
    pub fn new(docker: Docker, container: impl Into<String>) -> DockerCommunicator {
        DockerCommunicator {
            docker,
            container: container.into(),
            user: None,
            upload_owner: None,
        }
    }

    /// Runs commands as `user` (`name`, `uid`, `name:group` or `uid:gid`).
    pub fn with_user(mut self, user: Option<String>) -> DockerCommunicator {
        self.user = user.filter(|u| !u.is_empty());
        self
    }

    /// Gives uploads without an explicit owner to `owner` (usually the container's user); root
    /// and `None` leave them owned by `0:0`.
    pub fn with_upload_owner(mut self, owner: Option<String>) -> DockerCommunicator {
        self.upload_owner = owner.filter(|o| !o.is_empty() && !is_root(o));
        self
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// Runs `command` as root and fails unless it exits with 0 (for chown/chmod after uploads).
    async fn run_checked(&self, command: String) -> Result<(), CommError> {
        let cmd = RemoteCommand {
            command,
            ..RemoteCommand::default()
        };
        let mut stderr = String::new();
        let status = self
            .exec_as(&cmd, Some("0"), &mut |stream, line: &str| {
                if stream == Stream::Stderr {
                    stderr.push_str(line);
                    stderr.push('\n');
                }
            })
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(CommError::Remote(format!(
                "`{}` ended with {status:?}: {}",
                cmd.command,
                stderr.trim_end()
            )))
        }
    }

    async fn exec_as(
        &self,
        cmd: &RemoteCommand,
        user: Option<&str>,
        out: &mut dyn OutputSink,
    ) -> Result<ExitStatus, CommError> {
        let env: Vec<String> = cmd.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let config = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(cmd.pty),
            env: Some(env),
            cmd: Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                cmd.command.clone(),
            ]),
            user: user.map(str::to_owned),
            working_dir: cmd.workdir.clone(),
            ..CreateExecOptions::default()
        };
        let exec = self
            .docker
            .create_exec(&self.container, config)
            .await
            .map_err(api_error)?;
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(api_error)?;
        let StartExecResults::Attached { mut output, .. } = started else {
            unreachable!("an exec started without `detach` is attached");
        };
        let mut lines = Lines::default();
        while let Some(chunk) = output.next().await {
            match chunk.map_err(api_error)? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    lines.push(Stream::Stdout, &message, out)
                }
                LogOutput::StdErr { message } => lines.push(Stream::Stderr, &message, out),
                LogOutput::StdIn { .. } => {}
            }
        }
        lines.finish(out);
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(api_error)?;
        Ok(match inspect.exit_code {
            Some(code) => ExitStatus::Code(code as i32),
            None => ExitStatus::Disconnected,
        })
    }

    /// Gives `path` the owner the caller asked for, or the container's user.
    async fn fix_owner(
        &self,
        path: &str,
        opts: &UploadOptions,
        recursive: bool,
    ) -> Result<(), CommError> {
        let Some(owner) = opts.owner.as_ref().or(self.upload_owner.as_ref()) else {
            return Ok(());
        };
        let flag = if recursive { "-R " } else { "" };
        self.run_checked(format!(
            "chown {flag}{} {}",
            shell_quote(owner),
            shell_quote(path)
        ))
        .await
    }

    /// What the engine says is at the container's `path` (`HEAD /containers/{id}/archive`), or
    /// `None` when nothing is. A symlink is reported as itself, with its resolved target.
    async fn stat(&self, path: &str) -> Result<Option<PathStatResponse>, CommError> {
        let options = ContainerArchiveInfoOptions {
            path: path.to_string(),
        };
        match self
            .docker
            .get_container_archive_info(&self.container, Some(options))
            .await
        {
            Ok(stat) => Ok(Some(stat)),
            // No such path, or no such container: the upload that follows says which.
            Err(ApiError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            // The answer to a HEAD request has no body, so the engine's message is empty.
            Err(ApiError::DockerResponseServerError {
                status_code,
                message,
            }) if message.is_empty() => Err(CommError::Remote(format!(
                "the engine cannot inspect `{path}` in the container (HTTP status {status_code})"
            ))),
            Err(err) => Err(api_error(err)),
        }
    }

    /// Fails when the container's `dest` is a directory or a symlink to one: a file is uploaded
    /// to the path named, never into a directory there (as over SSH, where `cat > dir` fails).
    async fn refuse_directory(&self, dest: &str) -> Result<(), CommError> {
        let is_dir = |stat: &PathStatResponse| stat.file_mode & GO_MODE_DIR != 0;
        let directory = match self.stat(dest).await? {
            None => false,
            Some(link) if link.file_mode & GO_MODE_SYMLINK != 0 && !link.link_target.is_empty() => {
                self.stat(&link.link_target)
                    .await?
                    .is_some_and(|target| is_dir(&target))
            }
            Some(stat) => is_dir(&stat),
        };
        if directory {
            Err(CommError::Remote(format!(
                "`{dest}` is a directory in the container; a file upload needs the path of the \
                 file to write, e.g. `{}/<name>`",
                dest.trim_end_matches('/')
            )))
        } else {
            Ok(())
        }
    }

    /// Streams the tar that `pack` writes into the container, unpacked at `/`; the engine refuses
    /// to replace a directory with a non-directory or the reverse.
    async fn put_archive(
        &self,
        local: &Path,
        pack: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), CommError> {
        let (reader, writer) = tokio::io::duplex(PIPE_BUFFER);
        let packer = tokio::task::spawn_blocking(move || {
            let mut buffered =
                std::io::BufWriter::with_capacity(PIPE_BUFFER, SyncIoBridge::new(writer));
            pack(&mut buffered)?;
            buffered
                .into_inner()
                .map_err(|e| e.into_error())?
                .shutdown()
        });
        let options = UploadToContainerOptions {
            path: "/".to_string(),
            no_overwrite_dir_non_dir: Some("true".to_string()),
            copy_uidgid: None,
        };
        let sent = self
            .docker
            .upload_to_container(
                &self.container,
                Some(options),
                bollard::body_try_stream(ReaderStream::new(reader)),
            )
            .await
            .map_err(api_error);
        match packer.await.expect("the tar packer does not panic") {
            // A broken pipe only echoes the engine's failure that `sent` reports.
            Err(source) if source.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(CommError::Local {
                    path: local.to_owned(),
                    source,
                })
            }
            _ => sent,
        }
    }

    /// Streams the archive of the container's `src` into `unpack` (on a blocking thread).
    async fn get_archive<T: Send + 'static>(
        &self,
        src: &str,
        local: &Path,
        unpack: impl FnOnce(tar::Archive<&mut dyn std::io::Read>) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, CommError> {
        let options = DownloadFromContainerOptions {
            path: src.to_string(),
        };
        let mut stream = self
            .docker
            .download_from_container(&self.container, Some(options))
            .peekable();
        // The first item tells whether the path exists; report that as the engine says it.
        if let Some(Err(_)) = std::pin::Pin::new(&mut stream).peek().await {
            let Some(Err(err)) = stream.next().await else {
                unreachable!("peeked an error")
            };
            return Err(api_error(err));
        }
        let reader = StreamReader::new(stream.map_err(std::io::Error::other));
        let result = tokio::task::spawn_blocking(move || {
            let mut bridge = SyncIoBridge::new(Box::pin(reader));
            unpack(tar::Archive::new(&mut bridge as &mut dyn std::io::Read))
        })
        .await
        .expect("the tar unpacker does not panic");
        result.map_err(|source| CommError::Local {
            path: local.to_owned(),
            source,
        })
    }
}

#[async_trait]
impl Communicator for DockerCommunicator {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn exec(
        &self,
        cmd: &RemoteCommand,
        out: &mut dyn OutputSink,
    ) -> Result<ExitStatus, CommError> {
        self.exec_as(cmd, self.user.as_deref(), out).await
    }

    async fn upload(
        &self,
        src: UploadSource,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        let name = archive_name(dest)?;
        if dest.ends_with('/') {
            return Err(CommError::Remote(format!(
                "`{dest}` names a directory; a file upload needs the path of the file to write"
            )));
        }
        self.refuse_directory(dest).await?;
        let mode = opts.mode.unwrap_or(0o644);
        let local = match &src {
            UploadSource::File(path) => path.clone(),
            UploadSource::Bytes(_) => PathBuf::from("<memory>"),
        };
        let (size, mtime) = match &src {
            UploadSource::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|source| CommError::Local {
                        path: path.clone(),
                        source,
                    })?;
                let mtime = meta.modified().ok().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs())
                });
                (meta.len(), mtime.unwrap_or(0))
            }
            UploadSource::Bytes(bytes) => (bytes.len() as u64, now()),
        };
        self.put_archive(&local, move |out| {
            let mut tar = tar::Builder::new(out);
            let mut header = owned_header(tar::EntryType::Regular, mode, mtime);
            header.set_size(size);
            match src {
                UploadSource::File(path) => {
                    tar.append_data(&mut header, &name, std::fs::File::open(path)?)?
                }
                UploadSource::Bytes(bytes) => {
                    tar.append_data(&mut header, &name, bytes.as_slice())?
                }
            }
            tar.finish()
        })
        .await?;
        self.fix_owner(dest, opts, false).await
    }

    async fn upload_dir(
        &self,
        src: &Path,
        dest: &str,
        opts: &UploadOptions,
    ) -> Result<(), CommError> {
        let metadata = tokio::fs::metadata(src)
            .await
            .map_err(|source| CommError::Local {
                path: src.to_owned(),
                source,
            })?;
        if !metadata.is_dir() {
            return Err(CommError::Local {
                path: src.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let name = archive_name(dest)?;
        let root = src.to_owned();
        let mode = opts.mode;
        self.put_archive(src, move |out| {
            let mut tar = tar::Builder::new(out);
            append_tree(&mut tar, &root, &name, mode)?;
            tar.finish()
        })
        .await?;
        self.fix_owner(dest, opts, true).await
    }

    async fn download(&self, src: &str, dest: &Path) -> Result<(), CommError> {
        let target = dest.to_owned();
        let result = self
            .get_archive(src, dest, move |mut archive| {
                let mut entries = archive.entries()?;
                let mut entry = entries.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "empty archive")
                })??;
                if entry.header().entry_type().is_dir() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::IsADirectory,
                        "the remote path is a directory",
                    ));
                }
                let mut file = std::fs::File::create(&target)?;
                std::io::copy(&mut entry, &mut file)?;
                Ok(())
            })
            .await;
        if result.is_err() {
            tokio::fs::remove_file(dest).await.ok();
        }
        result
    }

    async fn download_dir(&self, src: &str, dest: &Path) -> Result<(), CommError> {
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(|source| CommError::Local {
                path: dest.to_owned(),
                source,
            })?;
        let root = dest.to_owned();
        // `dir/.` asks the engine for the directory's contents, named `./...` (as `docker cp
        // ctr:dir/. dest` does), so that entries unpack inside `dest` as they are named.
        let contents = format!("{}/.", src.trim_end_matches('/'));
        self.get_archive(&contents, dest, move |archive| {
            unpack_inside(archive, &root)
        })
        .await
    }
}

/// Unpacks every entry of `archive` inside `root` with [`tar::Entry::unpack_in`], failing on an
/// entry that would land outside it (a `..` component, or a path through a symlink that leads
/// out). Directories come last, deepest first, so that a read-only one does not stop its
/// contents (as [`tar::Archive::unpack`] does, which skips unsafe entries without a word).
fn unpack_inside(
    mut archive: tar::Archive<&mut dyn std::io::Read>,
    root: &Path,
) -> std::io::Result<()> {
    fn unpack<R: std::io::Read>(entry: &mut tar::Entry<'_, R>, root: &Path) -> std::io::Result<()> {
        entry.set_preserve_permissions(true);
        if entry.unpack_in(root)? {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "unsafe path `{}` in the archive",
                    String::from_utf8_lossy(&entry.path_bytes())
                ),
            ))
        }
    }
    let root = root.canonicalize()?;
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_dir() {
            directories.push(entry);
        } else {
            unpack(&mut entry, &root)?;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut directory in directories {
        unpack(&mut directory, &root)?;
    }
    Ok(())
}

/// Splits output chunks into lines per stream.
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    fn push(&mut self, stream: Stream, chunk: &[u8], out: &mut dyn OutputSink) {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        buf.extend_from_slice(chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            emit(stream, &line[..end], out);
        }
    }

    fn finish(self, out: &mut dyn OutputSink) {
        for (stream, rest) in [(Stream::Stdout, self.stdout), (Stream::Stderr, self.stderr)] {
            if !rest.is_empty() {
                emit(stream, &rest, out);
            }
        }
    }
}

fn emit(stream: Stream, line: &[u8], out: &mut dyn OutputSink) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.line(stream, &String::from_utf8_lossy(line));
}

/// The archive entry name for the container path `dest`, relative to `/` (where archives are
/// unpacked; missing parent directories are created).
fn archive_name(dest: &str) -> Result<PathBuf, CommError> {
    let path = Path::new(dest);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(CommError::Remote(format!(
            "the docker communicator needs an absolute path without `..`, not `{dest}`"
        )));
    }
    let name: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    Ok(if name.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        name
    })
}

/// Appends the directory `dir` as `name`, recursively, sorted, owned by `0:0`; regular files get
/// `mode` when given (directories keep theirs).
fn append_tree<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    mode: Option<u32>,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    let mut header = local_header(&meta, tar::EntryType::Directory);
    tar.append_data(&mut header, name, std::io::empty())?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let entry_name = name.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            append_tree(tar, &path, &entry_name, mode)?;
        } else if kind.is_file() {
            let mut header = local_header(&meta, tar::EntryType::Regular);
            header.set_size(meta.len());
            if let Some(mode) = mode {
                header.set_mode(mode);
            }
            tar.append_data(&mut header, &entry_name, std::fs::File::open(&path)?)?;
        } else if kind.is_symlink() {
            let mut header = local_header(&meta, tar::EntryType::Symlink);
            tar.append_link(&mut header, &entry_name, std::fs::read_link(&path)?)?;
        }
        // Sockets, fifos and devices are not uploaded.
    }
    Ok(())
}

fn local_header(meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    use std::os::unix::fs::MetadataExt;
    owned_header(kind, meta.mode() & 0o7777, meta.mtime().max(0) as u64)
}

/// A header owned by `0:0`.
fn owned_header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_root(user: &str) -> bool {
    matches!(user.split(':').next(), Some("root" | "0"))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Maps an Engine API error: a container that is gone or stopped is a lost connection, a refusal
/// is the engine's message, a transport failure cannot reach the machine.
fn api_error(err: ApiError) -> CommError {
    match err {
        ApiError::DockerResponseServerError {
            status_code,
            message,
        } => {
            if status_code == 409 && message.contains("not running") {
                CommError::Disconnected
            } else {
                CommError::Remote(message)
            }
        }
        other => CommError::Connect(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_relative_to_the_root() {
        assert_eq!(archive_name("/tmp/x").unwrap(), PathBuf::from("tmp/x"));
        assert_eq!(archive_name("/").unwrap(), PathBuf::from("."));
        assert_eq!(archive_name("/a/./b/").unwrap(), PathBuf::from("a/b"));
        assert!(archive_name("/a/../b").is_err());
        assert!(archive_name("relative").is_err());
    }

    /// A tar of `(name, kind, mode, link target or contents)`, names written as given (the tar
    /// builder refuses `..`, which is what these tests need).
    fn raw_tar(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for &(name, kind, mode, data) in entries {
            let mut header = owned_header(kind, mode, 0);
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if kind == tar::EntryType::Symlink {
                header.set_link_name(data).unwrap();
                header.set_cksum();
                tar.append(&header, std::io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_cksum();
                tar.append(&header, data.as_bytes()).unwrap();
            }
        }
        tar.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: &[u8], root: &Path) -> std::io::Result<()> {
        let mut reader = bytes;
        unpack_inside(
            tar::Archive::new(&mut reader as &mut dyn std::io::Read),
            root,
        )
    }

    #[test]
    fn unpacking_stays_inside_the_destination() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let outside = tempfile::tempdir().unwrap();
        let root = outside.path().join("root");
        std::fs::create_dir(&root).unwrap();

        let err =
            unpack_bytes(&raw_tar(&[("../escaped", Regular, 0o644, "x")]), &root).unwrap_err();
        assert!(
            err.to_string().contains("unsafe path `../escaped`"),
            "{err}"
        );
        assert!(!outside.path().join("escaped").exists());

        // A link to the outside may be downloaded, but nothing is written through it.
        let through_link = raw_tar(&[
            ("out", Symlink, 0o777, outside.path().to_str().unwrap()),
            ("out/escaped", Regular, 0o644, "x"),
        ]);
        assert!(unpack_bytes(&through_link, &root).is_err());
        assert!(!outside.path().join("escaped").exists());

        // Directories are applied last: a read-only one still gets its contents.
        let tree = raw_tar(&[
            ("./", Directory, 0o755, ""),
            ("./ro/", Directory, 0o555, ""),
            ("./ro/file", Regular, 0o644, "in ro\n"),
        ]);
        let fresh = outside.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        unpack_bytes(&tree, &fresh).unwrap();
        assert_eq!(
            std::fs::read_to_string(fresh.join("ro/file")).unwrap(),
            "in ro\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let ro = std::fs::metadata(fresh.join("ro")).unwrap();
        assert_eq!(ro.permissions().mode() & 0o777, 0o555);
        // Let the temporary directory be removed.
        std::fs::set_permissions(fresh.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn lines_split_across_chunks_and_streams() {
        let mut seen = Vec::new();
        let mut sink = |s: Stream, l: &str| seen.push((s, l.to_string()));
        let mut lines = Lines::default();
        lines.push(Stream::Stdout, b"a\nb", &mut sink);
        lines.push(Stream::Stderr, b"e\r\n", &mut sink);
        lines.push(Stream::Stdout, b"c\n", &mut sink);
        lines.push(Stream::Stdout, b"tail", &mut sink);
        lines.finish(&mut sink);
        assert_eq!(
            seen,
            [
                (Stream::Stdout, "a".to_string()),
                (Stream::Stderr, "e".to_string()),
                (Stream::Stdout, "bc".to_string()),
                (Stream::Stdout, "tail".to_string()),
            ]
        );
    }
}
