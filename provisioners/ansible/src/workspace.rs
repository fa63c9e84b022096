//! The private temp directory of one run (mode `0700`): the `known_hosts` file, the private key
//! when it exists only in memory (mode `0600`), and the SSH control sockets. Dropping it closes
//! the shared SSH connections left behind by Ansible, then removes the directory, on success,
//! failure and cancellation alike.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::inventory::ssh_quote;

pub(crate) struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// Creates `kiln-ansible-XXXXXX` (mode `0700`) in the system's temp directory.
    pub(crate) fn create() -> std::io::Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-ansible-")
            .permissions(Permissions::from_mode(0o700))
            .tempdir()?;
        std::fs::create_dir(dir.path().join("cp"))?;
        Ok(Workspace { dir })
    }

    /// Where `ssh` puts its control sockets.
    pub(crate) fn control_dir(&self) -> PathBuf {
        self.dir.path().join("cp")
    }

    /// Writes `contents` to `name` in the directory, readable by the owner only.
    pub(crate) fn write(&self, name: &str, contents: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        Ok(path)
    }
}

impl Drop for Workspace {
    /// Asks every `ssh` control master (they run detached, outside Ansible's process group, for
    /// up to `ControlPersist` after their last use) to exit. Each answers at once over its
    /// socket, so this blocks only briefly. A master that does not answer exits by itself once
    /// `ControlPersist` has passed; nothing more can be done about it here.
    fn drop(&mut self) {
        for socket in sockets(&self.control_dir()) {
            let _ = Command::new("ssh")
                .args(["-O", "exit", "-o"])
                .arg(format!("ControlPath={}", ssh_quote(&socket)))
                .arg("kiln-build-machine")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The sockets in `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect()
}
