//! Appending a record to a manifest file: under a process-wide lock and an advisory `flock` on
//! `<output>.lock`, read, append, write a temporary file in the same directory, fsync, rename.
//! The lock file is removed when the lock is released, so nothing but the manifest is left.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Serializes writers within this process; `flock` does the same across processes.
static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// Why the manifest could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot create the directory `{}`", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock `{}`", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the manifest `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the existing manifest `{}` is not valid JSON", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the existing manifest `{}` has no list of `builds`", path.display())]
    NotAManifest { path: PathBuf },
    #[error("cannot write the manifest `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Appends `record` to the `builds` of the manifest at `path` (created when missing) and sets
/// `last_run_uuid`. Other content of an existing manifest is kept as it is.
pub(crate) fn append(path: &Path, record: Value, run_uuid: &str) -> Result<(), ManifestError> {
    let _in_process = PROCESS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| ManifestError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let _across_processes = lock(path)?;

    let mut doc = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|source| {
            ManifestError::Parse {
                path: path.to_path_buf(),
                source,
            }
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(source) => {
            return Err(ManifestError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match doc
        .entry("builds")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(builds) => builds.push(record),
        _ => {
            return Err(ManifestError::NotAManifest {
                path: path.to_path_buf(),
            })
        }
    }
    doc.insert(
        "last_run_uuid".to_string(),
        Value::String(run_uuid.to_string()),
    );

    write_atomically(path, &dir, &Value::Object(doc)).map_err(|source| ManifestError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// An exclusive `flock` on `<path>.lock`; dropping it removes the lock file, then releases it.
struct LockFile {
    _file: File,
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Removed while still locked: a writer that opened this file meanwhile sees, once it
        // gets the lock, that the path no longer names it, and starts again (see `lock`).
        std::fs::remove_file(&self.path).ok();
        // `file` closes after this, releasing the lock.
    }
}

/// Takes an exclusive `flock` on `<path>.lock`, held until the returned guard is dropped.
///
/// The lock file is created when missing and removed by the holder when it is done. A writer
/// can open the file just before the holder removes it and then lock a file no longer at the
/// path; so after locking, the open file must still be the one at the path, or the lock is
/// taken again on the file now there.
fn lock(path: &Path) -> Result<LockFile, ManifestError> {
    use std::os::unix::fs::MetadataExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let err = |source| ManifestError::Lock {
        path: lock_path.clone(),
        source,
    };
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(err)?;
        flock(&file).map_err(err)?;
        let held = file.metadata().map_err(err)?;
        match std::fs::metadata(&lock_path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(LockFile {
                    _file: file,
                    path: lock_path,
                })
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// `flock(LOCK_EX)`, waiting, and retried when a signal interrupts it.
fn flock(file: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes `doc` to a temporary file beside `path`, syncs it, renames it over `path` and syncs the
/// directory, so that readers see the old manifest or the new one, never a part.
fn write_atomically(path: &Path, dir: &Path, doc: &Value) -> std::io::Result<()> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, doc)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holders in several threads (each with its own open file, as separate processes have)
    /// that keep removing the lock file: the lock still admits one holder at a time, so no
    /// increment of the shared counter is lost, and no lock file is left.
    #[test]
    fn the_lock_admits_one_holder_at_a_time_though_its_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let counter = dir.path().join("counter");
        std::fs::write(&counter, "0").unwrap();
        let (threads, rounds) = (4, 200);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..rounds {
                        let _held = lock(&path).unwrap();
                        let n: u32 = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
                        std::thread::yield_now();
                        std::fs::write(&counter, (n + 1).to_string()).unwrap();
                    }
                });
            }
        });
        let total: u32 = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
        assert_eq!(total, threads * rounds);
        assert!(!dir.path().join("m.json.lock").exists());
    }
}
