//! What Kiln hands to Ansible: the inventory (one host, reached directly over SSH), the
//! `known_hosts` line that pins the machine's host key, and the SSH options that enforce it.
//!
//! The inventory is JSON, which Ansible's `yaml` inventory plugin reads (for a `.json` file), so
//! no value needs INI quoting. The SSH options go into `ansible_ssh_args`: Ansible puts those
//! first on the `ssh` command line, and `ssh` keeps the first value of each option, so
//! `StrictHostKeyChecking=yes` holds even when `ANSIBLE_HOST_KEY_CHECKING=False` is set (as many
//! Packer templates do).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The name `ssh` looks the host key up under (`HostKeyAlias`), whatever the address and port.
const HOST_KEY_ALIAS: &str = "kiln-build-machine";

/// A host public key in OpenSSH form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostKey {
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    pub base64: String,
}

/// Why a host key given by the builder cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the machine's host key `{0}` is not of the form `TYPE BASE64`")]
pub struct HostKeyError(String);

impl HostKey {
    /// Parses `TYPE BASE64 [COMMENT]`, as in a `.pub` file or a `known_hosts` line.
    pub(crate) fn parse(text: &str) -> Result<HostKey, HostKeyError> {
        let error = || HostKeyError(text.to_string());
        let mut fields = text.split_whitespace();
        let (Some(algorithm), Some(base64)) = (fields.next(), fields.next()) else {
            return Err(error());
        };
        let algorithm_ok = algorithm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.@".contains(c));
        let base64_ok = base64
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
        if !algorithm_ok || !base64_ok {
            return Err(error());
        }
        Ok(HostKey {
            algorithm: algorithm.to_string(),
            base64: base64.to_string(),
        })
    }

    /// The `known_hosts` file that trusts this key, and only it, for the machine.
    pub(crate) fn known_hosts(&self) -> String {
        format!("{HOST_KEY_ALIAS} {} {}\n", self.algorithm, self.base64)
    }
}

/// The options every `ssh` (and `scp`, `sftp`) that Ansible starts gets: Ansible's own defaults
/// (compression, a shared connection kept for 60 s), the control sockets in `control_dir` so that
/// Kiln can close them, and strict checking against `known_hosts` alone.
pub(crate) fn ssh_args(known_hosts: &Path, control_dir: &Path) -> String {
    let control_path = control_dir.join("%C");
    let options = [
        "ControlMaster=auto".to_string(),
        "ControlPersist=60s".to_string(),
        format!("ControlPath={}", ssh_quote(&control_path)),
        format!("HostKeyAlias={HOST_KEY_ALIAS}"),
        format!("UserKnownHostsFile={}", ssh_quote(known_hosts)),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        "IdentitiesOnly=yes".to_string(),
    ];
    let mut args = vec!["-C".to_string()];
    for option in options {
        args.push("-o".to_string());
        args.push(shell_quote(&option));
    }
    args.join(" ")
}

/// A path as a double-quoted `ssh` option value (`ssh` splits unquoted values at spaces).
pub(crate) fn ssh_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One word for Python's `shlex.split`, which Ansible uses on `ansible_ssh_args`.
fn shell_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=./,:@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'"'"'"#))
    }
}

/// The one host Kiln builds, as Ansible should reach it.
#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    pub host_alias: String,
    pub groups: Vec<String>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub private_key_file: PathBuf,
    /// From [`ssh_args`].
    pub ssh_args: String,
}

impl Inventory {
    /// The inventory as Ansible's YAML/JSON inventory format.
    pub(crate) fn to_json(&self) -> Value {
        let host_vars = json!({
            "ansible_connection": "ssh",
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": self.private_key_file,
            "ansible_ssh_args": self.ssh_args,
        });
        let only_this_host =
            |vars: Value| Value::Object(Map::from_iter([(self.host_alias.clone(), vars)]));
        let mut all = Map::new();
        all.insert("hosts".to_string(), only_this_host(host_vars));
        if !self.groups.is_empty() {
            let children = self
                .groups
                .iter()
                .map(|g| (g.clone(), json!({ "hosts": only_this_host(json!({})) })))
                .collect();
            all.insert("children".to_string(), Value::Object(children));
        }
        json!({ "all": all })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(groups: &[&str]) -> Inventory {
        Inventory {
            host_alias: "default".to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            host: "127.0.0.1".to_string(),
            port: 2222,
            user: "root".to_string(),
            private_key_file: PathBuf::from("/tmp/k/id"),
            ssh_args: "-C".to_string(),
        }
    }

    #[test]
    fn inventory_without_groups_has_one_host() {
        assert_eq!(
            inventory(&[]).to_json(),
            json!({ "all": { "hosts": { "default": {
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": 2222,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": "/tmp/k/id",
                "ansible_ssh_args": "-C",
            } } } })
        );
    }

    #[test]
    fn groups_become_children_holding_the_host() {
        let mut inv = inventory(&["web", "db"]);
        inv.host_alias = "builder one".to_string();
        let json = inv.to_json();
        assert_eq!(
            json["all"]["children"],
            json!({
                "web": { "hosts": { "builder one": {} } },
                "db": { "hosts": { "builder one": {} } },
            })
        );
        assert_eq!(json["all"]["hosts"]["builder one"]["ansible_port"], 2222);
    }

    #[test]
    fn ssh_args_pin_the_host_key_and_quote_paths() {
        let args = ssh_args(Path::new("/tmp/a b/known_hosts"), Path::new("/tmp/a b/cp"));
        assert_eq!(
            args,
            "-C -o ControlMaster=auto -o ControlPersist=60s \
             -o 'ControlPath=\"/tmp/a b/cp/%C\"' -o HostKeyAlias=kiln-build-machine \
             -o 'UserKnownHostsFile=\"/tmp/a b/known_hosts\"' -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        );
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
    }

    #[test]
    fn host_keys_parse_with_or_without_comment() {
        let key = HostKey::parse("ssh-ed25519 AAAAC3Nza+/1= root@machine").unwrap();
        assert_eq!(key.algorithm, "ssh-ed25519");
        assert_eq!(key.base64, "AAAAC3Nza+/1=");
        assert_eq!(
            key.known_hosts(),
            "kiln-build-machine ssh-ed25519 AAAAC3Nza+/1=\n"
        );
        assert_eq!(
            HostKey::parse("ecdsa-sha2-nistp256 AAAA")
                .unwrap()
                .algorithm,
            "ecdsa-sha2-nistp256"
        );
    }

    #[test]
    fn malformed_host_keys_are_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AA\"AA",
            "ssh ed25519;rm AAAA",
        ] {
            assert!(HostKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
