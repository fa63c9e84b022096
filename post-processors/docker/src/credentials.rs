//! Registry credentials from the Docker config file, found the way the Docker CLI finds them:
//! `credHelpers.<registry>`, else `credsStore`, each asked through `docker-credential-<name> get`,
//! else the `auths.<registry>` entry.
//!
//! Nothing here logs or formats a secret: errors name the helper, the registry key and the file,
//! never what a helper printed on success or what an `auth` field held.
//!
//! A helper runs as a child process with a deadline ([`HELPER_TIMEOUT`]) and is killed when it
//! passes, or when the lookup is dropped (a cancelled build does not wait for it).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The key Docker Hub's credentials are stored under (Docker CLI's `registry.IndexServer`).
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a helper prints, trimmed, when it holds nothing for the server (the Docker CLI
/// recognises `credentials not found in native keychain`; other helpers shorten it).
const NOT_FOUND: &str = "credentials not found";

/// The user name a helper returns when `Secret` is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// How long a credential helper may take to answer before it is killed and the lookup fails.
/// Helpers answer from a keychain or a file in milliseconds; one that asks the user (a GUI
/// keychain prompt) has this long to be answered.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why registry credentials could not be found.
#[derive(Debug, thiserror::Error)]
pub enum FindCredentialsError {
    #[error("cannot read the Docker config file `{}`", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // The serde error is not kept: its message can quote a value, and the file holds secrets.
    #[error("the Docker config file `{}` is not valid ({what} at line {line}, column {column})", path.display())]
    ParseConfig {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the `auth` of `auths.\"{key}\"` in `{}` is not base64 `user:password`", path.display())]
    BadAuth { path: PathBuf, key: String },
    #[error("credential helper `{helper}` is not on `PATH` (named by `{setting}` in the Docker config file)")]
    HelperMissing {
        helper: String,
        setting: &'static str,
    },
    #[error(
        "credential helper `{helper}` gave no answer for `{server}` within {timeout:?} and was \
         stopped"
    )]
    HelperTimeout {
        helper: String,
        server: String,
        timeout: Duration,
    },
    #[error("cannot run credential helper `{helper}`")]
    RunHelper {
        helper: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "credential helper `{helper}` failed ({status}){}",
        message_suffix(message)
    )]
    HelperFailed {
        helper: String,
        status: ExitStatus,
        /// What it printed (its error message), trimmed and shortened.
        message: String,
    },
    // As with the config file, what the helper printed is not quoted: it may be the secret.
    #[error("credential helper `{helper}` printed something that is not credentials JSON")]
    HelperOutput { helper: String },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Where credentials are looked up: the Docker config file, the `PATH` its credential helpers
/// are found on (`None`: the process's own), and how long a helper may take.
#[derive(Debug, Clone)]
pub struct CredentialSources {
    pub config: PathBuf,
    pub path: Option<OsString>,
    /// A helper still running after this long is killed ([`HELPER_TIMEOUT`] by default).
    pub helper_timeout: Duration,
}

/// Where a registry's credentials came from (for a message; it holds no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `docker-credential-<name>`, named by `credHelpers` or `credsStore`.
    Helper(String),
    /// An `auths` entry of the config file.
    ConfigFile,
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Helper(helper) => write!(f, "credential helper `{helper}`"),
            Self::ConfigFile => f.write_str("the Docker config file"),
        }
    }
}

/// Found credentials. `Debug` leaves the secrets out.
#[derive(Clone, PartialEq)]
pub struct Found {
    pub credentials: DockerCredentials,
    pub source: CredentialSource,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("username", &self.credentials.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CredentialSources {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; `None` when neither
    /// `DOCKER_CONFIG` nor `HOME` is set.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
        Some(Self {
            config: dir.join("config.json"),
            path: None,
            helper_timeout: HELPER_TIMEOUT,
        })
    }

    /// The credentials for `registry` (a host as [`crate::registry_of`] gives it, e.g.
    /// `docker.io` or `127.0.0.1:5000`); `None` means push anonymously. A missing config file
    /// holds no credentials. A credential helper it runs is killed after
    /// [`Self::helper_timeout`], or when the returned future is dropped.
    pub async fn lookup(&self, registry: &str) -> Result<Option<Found>, FindCredentialsError> {
        let text = match tokio::fs::read_to_string(&self.config).await {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FindCredentialsError::ReadConfig {
                    path: self.config.clone(),
                    source,
                })
            }
        };
        let file: ConfigFile =
            serde_json::from_str(&text).map_err(|e| FindCredentialsError::ParseConfig {
                path: self.config.clone(),
                what: match e.classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                        "not JSON"
                    }
                    _ => "unexpected value",
                },
                line: e.line(),
                column: e.column(),
            })?;
        self.lookup_in(&file, registry).await
    }

    /// [`Self::lookup`] on a parsed config file.
    async fn lookup_in(
        &self,
        file: &ConfigFile,
        registry: &str,
    ) -> Result<Option<Found>, FindCredentialsError> {
        let server = server_key(registry);
        let helper = match find_entry(&file.cred_helpers, registry) {
            Some((_, name)) => Some((name, "credHelpers")),
            None => file.creds_store.as_ref().map(|name| (name, "credsStore")),
        };
        // An empty name (`"credsStore": ""`) means no helper, as in the Docker CLI.
        if let Some((name, setting)) = helper.filter(|(name, _)| !name.is_empty()) {
            return self.ask_helper(name, setting, server).await;
        }
        let Some((key, entry)) = find_entry(&file.auths, registry) else {
            return Ok(None);
        };
        let bad_auth = || FindCredentialsError::BadAuth {
            path: self.config.clone(),
            key: key.to_string(),
        };
        let mut credentials = DockerCredentials {
            serveraddress: Some(server.to_string()),
            email: entry.email.clone(),
            ..DockerCredentials::default()
        };
        match entry.auth.as_deref().filter(|a| !a.is_empty()) {
            // `auth` wins over `username`/`password`, as in the Docker CLI.
            Some(auth) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad_auth())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad_auth())?;
                let (user, password) = decoded.split_once(':').ok_or_else(bad_auth)?;
                credentials.username = Some(user.to_string());
                credentials.password = Some(password.trim_matches('\0').to_string());
            }
            None => {
                credentials.username = entry.username.clone().filter(|s| !s.is_empty());
                credentials.password = entry.password.clone().filter(|s| !s.is_empty());
            }
        }
        credentials.identitytoken = entry.identitytoken.clone().filter(|s| !s.is_empty());
        credentials.registrytoken = entry.registrytoken.clone().filter(|s| !s.is_empty());
        if credentials.username.is_none()
            && credentials.password.is_none()
            && credentials.identitytoken.is_none()
            && credentials.registrytoken.is_none()
        {
            // An empty entry, as `docker login` leaves beside a `credsStore`.
            return Ok(None);
        }
        Ok(Some(Found {
            credentials,
            source: CredentialSource::ConfigFile,
        }))
    }

    /// Runs `docker-credential-<name> get` with `server` on stdin, for at most
    /// [`Self::helper_timeout`]; the child is killed when that passes or this future is dropped.
    async fn ask_helper(
        &self,
        name: &str,
        setting: &'static str,
        server: &str,
    ) -> Result<Option<Found>, FindCredentialsError> {
        let helper = format!("docker-credential-{name}");
        let mut command = Command::new(&helper);
        command
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        let run_error = |source: std::io::Error| FindCredentialsError::RunHelper {
            helper: helper.clone(),
            source,
        };
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == ErrorKind::NotFound {
                FindCredentialsError::HelperMissing {
                    helper: helper.clone(),
                    setting,
                }
            } else {
                run_error(source)
            }
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper may exit without reading; its exit status tells what happened. Dropped
            // here, so the helper reads its stdin to the end.
            match stdin.write_all(server.as_bytes()).await {
                Err(e) if e.kind() != ErrorKind::BrokenPipe => return Err(run_error(e)),
                _ => {}
            }
        }
        // On timeout the output future is dropped with the child, which kills it
        // (`kill_on_drop`); the runtime reaps it.
        let output = match tokio::time::timeout(self.helper_timeout, child.wait_with_output()).await
        {
            Ok(output) => output.map_err(run_error)?,
            Err(_) => {
                return Err(FindCredentialsError::HelperTimeout {
                    helper,
                    server: server.to_string(),
                    timeout: self.helper_timeout,
                })
            }
        };
        if !output.status.success() {
            let stdout = String::from_utf8_lossy(&output.stdout);
            if stdout.trim().starts_with(NOT_FOUND) {
                return Ok(None);
            }
            // Helpers print their error on stdout; some use stderr.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = [stdout.trim(), stderr.trim()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("; ");
            return Err(FindCredentialsError::HelperFailed {
                helper,
                status: output.status,
                message: shorten(&message, 300),
            });
        }
        let reply: HelperReply = serde_json::from_slice(&output.stdout).map_err(|_| {
            FindCredentialsError::HelperOutput {
                helper: helper.clone(),
            }
        })?;
        if reply.username.is_empty() && reply.secret.is_empty() {
            return Ok(None);
        }
        let mut credentials = DockerCredentials {
            serveraddress: Some(server.to_string()),
            ..DockerCredentials::default()
        };
        if reply.username == TOKEN_USERNAME {
            credentials.identitytoken = Some(reply.secret);
        } else {
            credentials.username = Some(reply.username);
            credentials.password = Some(reply.secret);
        }
        Ok(Some(Found {
            credentials,
            source: CredentialSource::Helper(helper),
        }))
    }
}

/// The first `max` characters of `text`, with `...` when it was longer.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The parts of `config.json` that hold credentials.
#[derive(Default, Deserialize)]
#[serde(default)]
struct ConfigFile {
    auths: BTreeMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// One `auths` entry (Docker CLI's `types.AuthConfig` as stored).
#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// What `docker-credential-<name> get` prints.
#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Whether `registry` names Docker Hub.
fn is_hub(registry: &str) -> bool {
    matches!(registry, "docker.io" | "index.docker.io")
}

/// The server address credentials for `registry` are stored and asked for under: the host
/// itself, or `https://index.docker.io/v1/` for Docker Hub (Docker CLI's `GetAuthConfigKey`).
fn server_key(registry: &str) -> &str {
    if is_hub(registry) {
        HUB_KEY
    } else {
        registry
    }
}

/// The host a config key names: `https://host/v1/`, `http://host` and `host/path` all name
/// `host` (Docker CLI's `ConvertToHostname`).
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or_default()
}

/// The entry of `map` for `registry`: the one under its server key, else the first whose key
/// names its host (for Docker Hub, `index.docker.io` or `docker.io`).
fn find_entry<'m, T>(map: &'m BTreeMap<String, T>, registry: &str) -> Option<(&'m str, &'m T)> {
    if let Some((key, value)) = map.get_key_value(server_key(registry)) {
        return Some((key, value));
    }
    map.iter()
        .find(|(key, _)| {
            let host = key_host(key);
            host == registry || (is_hub(registry) && is_hub(host))
        })
        .map(|(key, value)| (key.as_str(), value))
}

#[cfg(test)]
mod tests;
