//! Appending a record to a manifest file: under a process-wide lock and an advisory `flock` on
//! `<output>.lock`, read, append, write a temporary file in the same directory, fsync, rename.

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

/// Takes an exclusive `flock` on `<path>.lock`, held until the returned file is dropped.
fn lock(path: &Path) -> Result<File, ManifestError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let err = |source| ManifestError::Lock {
        path: lock_path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)?;
    loop {
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(e));
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
