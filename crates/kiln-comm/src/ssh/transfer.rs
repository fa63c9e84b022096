//! File transfers over SSH channels: `cat` for single files, one tar stream for directories.

use std::path::Path;

use tokio::io::AsyncRead;
use tokio_util::io::SyncIoBridge;

use super::{shell_quote, SshCommunicator};
use crate::{CommError, UploadOptions, UploadSource};

/// Bytes buffered between the tar (un)packer thread and the channel.
const PIPE_BUFFER: usize = 256 * 1024;

/// `chmod`/`chown` commands for `path` (`-R` for directories), each prefixed with ` && `.
fn ownership(path: &str, opts: &UploadOptions, recursive: bool) -> String {
    let mut line = String::new();
    if let (Some(mode), false) = (opts.mode, recursive) {
        line.push_str(&format!(" && chmod {mode:o} {}", shell_quote(path)));
    }
    if let Some(owner) = &opts.owner {
        let flag = if recursive { "-R " } else { "" };
        line.push_str(&format!(
            " && chown {flag}{} {}",
            shell_quote(owner),
            shell_quote(path)
        ));
    }
    line
}

pub(super) async fn upload(
    comm: &SshCommunicator,
    src: UploadSource,
    dest: &str,
    opts: &UploadOptions,
) -> Result<(), CommError> {
    let command = format!(
        "cat > {}{}",
        shell_quote(dest),
        ownership(dest, opts, false)
    );
    let mut input: Box<dyn AsyncRead + Unpin + Send> = match src {
        UploadSource::File(path) => {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| CommError::Local { path, source })?;
            Box::new(file)
        }
        UploadSource::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes)),
    };
    comm.transfer(&command, Some(&mut input), None).await
}

/// Packs `src` into one tar stream unpacked by `tar -x` under `dest`. With `opts.mode`, regular
/// files get that mode (directories keep theirs); `opts.owner` applies to all of `dest`.
pub(super) async fn upload_dir(
    comm: &SshCommunicator,
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
    let quoted = shell_quote(dest);
    let command = format!(
        "mkdir -p {quoted} && tar -x -f - -C {quoted}{}",
        ownership(dest, opts, true)
    );
    let (mut reader, writer) = tokio::io::duplex(PIPE_BUFFER);
    let root = src.to_owned();
    let mode = opts.mode;
    let pack = tokio::task::spawn_blocking(move || {
        // Tar writes 512-byte headers: batch them into full channel packets.
        let mut buffered =
            std::io::BufWriter::with_capacity(PIPE_BUFFER, SyncIoBridge::new(writer));
        pack_dir(&root, mode, &mut buffered)?;
        buffered
            .into_inner()
            .map_err(|e| e.into_error())?
            .shutdown()
    });
    let sent = comm.transfer(&command, Some(&mut reader), None).await;
    drop(reader);
    let packed = pack.await.expect("the tar packer does not panic");
    match packed {
        // A broken pipe only echoes the remote failure that `sent` reports.
        Err(source) if source.kind() != std::io::ErrorKind::BrokenPipe => Err(CommError::Local {
            path: src.to_owned(),
            source,
        }),
        _ => sent,
    }
}

fn pack_dir(root: &Path, mode: Option<u32>, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    match mode {
        None => tar.append_dir_all(".", root)?,
        Some(mode) => append_tree(&mut tar, root, Path::new("."), mode)?,
    }
    tar.finish()
}

/// Appends `dir` recursively with `mode` on every regular file.
fn append_tree<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    mode: u32,
) -> std::io::Result<()> {
    tar.append_dir(name, dir)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let entry_name = name.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            append_tree(tar, &path, &entry_name, mode)?;
        } else if kind.is_file() {
            let mut file = std::fs::File::open(&path)?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&file.metadata()?);
            header.set_mode(mode);
            tar.append_data(&mut header, &entry_name, &mut file)?;
        } else {
            tar.append_path_with_name(&path, &entry_name)?;
        }
    }
    Ok(())
}

pub(super) async fn download(
    comm: &SshCommunicator,
    src: &str,
    dest: &Path,
) -> Result<(), CommError> {
    let local = |source| CommError::Local {
        path: dest.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
    let result = comm
        .transfer(&format!("cat {}", shell_quote(src)), None, Some(&mut file))
        .await;
    if result.is_err() {
        drop(file);
        tokio::fs::remove_file(dest).await.ok();
    }
    result
}

/// Streams `tar -c` of the remote `src` into the local directory `dest` (created if missing).
pub(super) async fn download_dir(
    comm: &SshCommunicator,
    src: &str,
    dest: &Path,
) -> Result<(), CommError> {
    let local = |source| CommError::Local {
        path: dest.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(dest).await.map_err(local)?;
    let (reader, mut writer) = tokio::io::duplex(PIPE_BUFFER);
    let root = dest.to_owned();
    let unpack = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(SyncIoBridge::new(reader));
        archive.set_preserve_permissions(true);
        archive.unpack(&root)
    });
    let command = format!("tar -c -f - -C {} .", shell_quote(src));
    let received = comm.transfer(&command, None, Some(&mut writer)).await;
    drop(writer);
    let unpacked = unpack.await.expect("the tar unpacker does not panic");
    received?;
    unpacked.map_err(local)
}
