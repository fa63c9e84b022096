//! The cloud-init NoCloud seed: an ISO labelled `cidata` that creates the build user with the
//! build's ephemeral key and installs an SSH host key Kiln generated, so the communicator can
//! verify the guest instead of trusting it on first use.

use std::path::Path;

/// Why the seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot write the seed files")]
    Write(#[source] std::io::Error),
    #[error("cannot run `genisoimage` (install Debian's `genisoimage` package)")]
    Spawn(#[source] std::io::Error),
    #[error("`genisoimage` failed: {0}")]
    Failed(String),
}

/// What goes into the seed.
pub struct SeedSpec<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub user: &'a str,
    /// `authorized_keys` line of the build's key.
    pub authorized_key: &'a str,
    /// The guest's Ed25519 host key: OpenSSH private key and public line.
    pub host_private_key: &'a str,
    pub host_public_key: &'a str,
}

/// The `user-data` document.
pub fn user_data(spec: &SeedSpec<'_>) -> String {
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let user = if spec.user == "root" {
        format!(
            "disable_root: false\nusers:\n  - name: root\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {key}\n",
            key = spec.authorized_key
        )
    } else {
        format!(
            "users:\n  - name: {user}\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {key}\n",
            user = yaml_string(spec.user),
            key = spec.authorized_key
        )
    };
    format!(
        "#cloud-config\nmanage_etc_hosts: true\n{user}ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n{private}  ed25519_public: {public}\n",
        private = indent(spec.host_private_key),
        public = spec.host_public_key.trim(),
    )
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Writes `user-data` and `meta-data` into `dir` and makes `iso` from them.
pub async fn make_iso(spec: &SeedSpec<'_>, dir: &Path, iso: &Path) -> Result<(), SeedError> {
    let files = dir.join("cidata");
    std::fs::create_dir_all(&files).map_err(SeedError::Write)?;
    std::fs::write(files.join("user-data"), user_data(spec)).map_err(SeedError::Write)?;
    std::fs::write(
        files.join("meta-data"),
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_string(spec.instance_id),
            yaml_string(spec.hostname)
        ),
    )
    .map_err(SeedError::Write)?;
    crate::cd::genisoimage(&files, iso, Some("cidata"))
        .await
        .map_err(|e| match e {
            crate::cd::CdError::Spawn(e) => SeedError::Spawn(e),
            crate::cd::CdError::Failed(stderr) => SeedError::Failed(stderr),
            other => SeedError::Failed(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_has_the_user_key_and_host_key() {
        let spec = SeedSpec {
            instance_id: "i-1",
            hostname: "vm",
            user: "kiln",
            authorized_key: "ssh-ed25519 AAAAclient kiln",
            host_private_key:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
            host_public_key: "ssh-ed25519 AAAAhost kiln",
        };
        let text = user_data(&spec);
        assert!(text.starts_with("#cloud-config\nmanage_etc_hosts: true\n"));
        assert!(text.contains("  - name: \"kiln\"\n"), "{text}");
        assert!(
            text.contains("      - ssh-ed25519 AAAAclient kiln\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    abc\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  ed25519_public: ssh-ed25519 AAAAhost kiln\n"),
            "{text}"
        );
        assert!(text.contains("sudo: ALL=(ALL) NOPASSWD:ALL"), "{text}");
    }
}
