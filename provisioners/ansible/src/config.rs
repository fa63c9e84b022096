//! Decoding and checking an `ansible` block into [`Settings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use serde::Deserialize;

/// The options as written (see `docs/provisioners/ansible.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    playbook_file: Option<PathBuf>,
    command: Option<String>,
    extra_arguments: Vec<String>,
    ansible_env_vars: Vec<String>,
    groups: Vec<String>,
    host_alias: Option<String>,
    user: Option<String>,
    roles_path: Option<PathBuf>,
    galaxy_file: Option<PathBuf>,
    galaxy_command: Option<String>,
    inventory_directory: Option<PathBuf>,
    keep_inventory_file: bool,
    use_proxy: Option<bool>,
}

/// `ansible-galaxy install -r FILE`, run before the playbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Galaxy {
    pub command: String,
    /// Absolute.
    pub file: PathBuf,
}

/// A checked `ansible` configuration; paths are absolute.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub playbook: PathBuf,
    pub command: String,
    pub extra_arguments: Vec<String>,
    /// From `ansible_env_vars`, in order; later entries win.
    pub env: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub host_alias: String,
    /// `None`: the user the builder logs in as.
    pub user: Option<String>,
    pub roles_path: Option<PathBuf>,
    pub galaxy: Option<Galaxy>,
    /// Where the inventory file goes; the system's temp dir when `None`.
    pub inventory_directory: Option<PathBuf>,
    pub keep_inventory_file: bool,
}

const DEFAULT_COMMAND: &str = "ansible-playbook";
const DEFAULT_GALAXY_COMMAND: &str = "ansible-galaxy";
const DEFAULT_HOST_ALIAS: &str = "default";

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Result<Settings, Diagnostics> {
        let opts: Options = config.decode()?;
        let mut diags = Diagnostics::new();
        let mut error = |key: &str, message: String| {
            diags.push(Diagnostic::error(message).at(config.span_of(key)));
        };

        if opts.use_proxy == Some(true) {
            error(
                "use_proxy",
                "`use_proxy = true` is not supported: Kiln runs Ansible directly over SSH to the \
                 machine, without Packer's local proxy; remove the option or set it to `false`"
                    .to_string(),
            );
        }

        let mut existing_file = |key: &str, path: Option<&Path>| {
            let path = path?;
            let found = std::path::absolute(path).ok().filter(|p| p.is_file());
            if found.is_none() {
                error(key, format!("`{}` does not exist", path.display()));
            }
            found
        };
        let playbook = existing_file("playbook_file", opts.playbook_file.as_deref());
        let galaxy_file = existing_file("galaxy_file", opts.galaxy_file.as_deref());
        if opts.playbook_file.is_none() {
            // `span_of` falls back to the whole block for an absent option.
            error(
                "playbook_file",
                "`ansible` needs `playbook_file`".to_string(),
            );
        }

        let inventory_directory = match &opts.inventory_directory {
            Some(dir) => match std::path::absolute(dir) {
                Ok(abs) if abs.is_dir() => Some(abs),
                _ => {
                    error(
                        "inventory_directory",
                        format!("directory `{}` does not exist", dir.display()),
                    );
                    None
                }
            },
            None => None,
        };

        let mut env = BTreeMap::new();
        for pair in &opts.ansible_env_vars {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    env.insert(k.to_string(), v.to_string());
                }
                _ => error(
                    "ansible_env_vars",
                    format!("environment variable `{pair}` is not of the form `KEY=VALUE`"),
                ),
            }
        }

        let host_alias = opts
            .host_alias
            .unwrap_or_else(|| DEFAULT_HOST_ALIAS.to_string());
        if host_alias.trim().is_empty() {
            error("host_alias", "`host_alias` is empty".to_string());
        }
        if opts.groups.iter().any(|g| g.trim().is_empty()) {
            error("groups", "`groups` contains an empty name".to_string());
        }
        let command = opts.command.unwrap_or_else(|| DEFAULT_COMMAND.to_string());
        if command.is_empty() {
            error("command", "`command` is empty".to_string());
        }
        let roles_path = opts
            .roles_path
            .map(|p| std::path::absolute(&p).unwrap_or(p));

        let Some(playbook) = playbook.filter(|_| !diags.has_errors()) else {
            return Err(diags);
        };
        Ok(Settings {
            playbook,
            command,
            extra_arguments: opts.extra_arguments,
            env,
            groups: opts.groups,
            host_alias,
            user: opts.user,
            roles_path,
            galaxy: galaxy_file.map(|file| Galaxy {
                command: opts
                    .galaxy_command
                    .unwrap_or_else(|| DEFAULT_GALAXY_COMMAND.to_string()),
                file,
            }),
            inventory_directory,
            keep_inventory_file: opts.keep_inventory_file,
        })
    }
}
