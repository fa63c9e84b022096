//! Disk files through `qemu-img`: the working overlay on the base disk, the final convert, and
//! hashing the result.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// A `qemu-img` run that failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run `qemu-img` (is it installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("`qemu-img {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("`qemu-img info` printed something unexpected")]
    Info(#[source] serde_json::Error),
}

async fn qemu_img(args: &[String]) -> Result<Vec<u8>, QemuImgError> {
    let out = Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(QemuImgError::Spawn)?;
    if !out.status.success() {
        return Err(QemuImgError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// The format `qemu-img` detects for `path` (`qcow2`, `raw`, ...).
pub async fn detect_format(path: &Path) -> Result<String, QemuImgError> {
    #[derive(serde::Deserialize)]
    struct Info {
        format: String,
    }
    let out = qemu_img(&["info".into(), "--output=json".into(), s(path)]).await?;
    let info: Info = serde_json::from_slice(&out).map_err(QemuImgError::Info)?;
    Ok(info.format)
}

/// Creates the qcow2 overlay `overlay` on `base` (an absolute path), grown to `size` bytes.
pub async fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    size: Option<u64>,
    extra: &[String],
) -> Result<(), QemuImgError> {
    let mut args: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
    args.extend(["-F".into(), base_format.into(), "-b".into(), s(base)]);
    args.extend(extra.iter().cloned());
    args.push(s(overlay));
    if let Some(size) = size {
        args.push(size.to_string());
    }
    qemu_img(&args).await.map(drop)
}

/// Creates the blank qcow2 `path` of `size` bytes (the disk an installer writes to).
pub async fn create_blank(path: &Path, size: u64, extra: &[String]) -> Result<(), QemuImgError> {
    let mut args: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
    args.extend(extra.iter().cloned());
    args.push(s(path));
    args.push(size.to_string());
    qemu_img(&args).await.map(drop)
}

/// Writes `src` as a standalone image of `format` to `dest`.
pub async fn convert(
    src: &Path,
    dest: &Path,
    format: &str,
    compress: bool,
    extra: &[String],
) -> Result<(), QemuImgError> {
    let mut args: Vec<String> = vec!["convert".into(), "-O".into(), format.into()];
    if compress {
        args.extend(["-c".into(), "-o".into(), "compression_type=zstd".into()]);
    }
    args.extend(extra.iter().cloned());
    args.extend([s(src), s(dest)]);
    qemu_img(&args).await.map(drop)
}

/// Size and sha256 of a finished file.
pub async fn size_and_sha256(path: PathBuf) -> std::io::Result<(u64, String)> {
    tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&path)?.len();
        let digest = crate::checksum::hash_file(&path, crate::checksum::Algorithm::Sha256)?;
        Ok((size, digest))
    })
    .await
    .expect("hashing does not panic")
}
