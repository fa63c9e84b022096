//! `SshConfig`: the SSH communicator's options, with Packer's names and defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::key::SshKey;
use russh::keys::PublicKey;

/// The SSH communicator's options. Template options use Packer's names; builders fill in the
/// programmatic fields ([`SshConfig::ephemeral_key`], [`SshConfig::known_host_key`]) and usually
/// `ssh_host`/`ssh_port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SshConfig {
    /// Address of the machine.
    pub ssh_host: Option<String>,
    /// Port of the machine's SSH server.
    pub ssh_port: u16,
    /// User to log in as.
    pub ssh_username: Option<String>,
    /// Password for `ssh_username`.
    pub ssh_password: Option<Secret>,
    /// Private key (OpenSSH or PEM format, unencrypted) for `ssh_username`.
    pub ssh_private_key_file: Option<PathBuf>,
    /// Run commands in a pseudo-terminal.
    pub ssh_pty: bool,
    /// How long to wait for the machine to accept an SSH login.
    #[serde(deserialize_with = "go_duration")]
    pub ssh_timeout: Duration,
    /// Interval of keep-alive messages; zero disables them.
    #[serde(deserialize_with = "go_duration")]
    pub ssh_keep_alive_interval: Duration,
    /// Expected host key fingerprint, as `ssh-keygen -l` prints it (`SHA256:...`).
    pub ssh_host_key_fingerprint: Option<String>,
    /// Jump host to reach the machine through.
    pub ssh_bastion_host: Option<String>,
    pub ssh_bastion_port: u16,
    /// User on the jump host; `ssh_username` when unset.
    pub ssh_bastion_username: Option<String>,
    pub ssh_bastion_password: Option<Secret>,
    pub ssh_bastion_private_key_file: Option<PathBuf>,
    /// Expected host key fingerprint of the jump host (`SHA256:...`); trusted on first use and
    /// logged when unset.
    pub ssh_bastion_host_key_fingerprint: Option<String>,
    /// How many rejected logins to tolerate (a new machine may install its key late).
    pub ssh_handshake_attempts: u32,
    /// A key made by the builder for this build (e.g. injected through cloud-init); tried first.
    #[serde(skip)]
    pub ephemeral_key: Option<SshKey>,
    /// The host key the machine is known to have (e.g. the builder generated it); a different key
    /// is refused.
    #[serde(skip)]
    pub known_host_key: Option<PublicKey>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            ssh_host: None,
            ssh_port: 22,
            ssh_username: None,
            ssh_password: None,
            ssh_private_key_file: None,
            ssh_pty: false,
            ssh_timeout: Duration::from_secs(5 * 60),
            ssh_keep_alive_interval: Duration::from_secs(5),
            ssh_host_key_fingerprint: None,
            ssh_bastion_host: None,
            ssh_bastion_port: 22,
            ssh_bastion_username: None,
            ssh_bastion_password: None,
            ssh_bastion_private_key_file: None,
            ssh_bastion_host_key_fingerprint: None,
            ssh_handshake_attempts: 10,
            ephemeral_key: None,
            known_host_key: None,
        }
    }
}

impl SshConfig {
    /// `host:port` of the jump host (`ssh_bastion_host`), when there is one.
    pub fn bastion_address(&self) -> Option<String> {
        let host = self.ssh_bastion_host.as_ref()?;
        Some(format!("{host}:{}", self.ssh_bastion_port))
    }
}

/// A password: formatting it prints `<sensitive>`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<sensitive>")
    }
}

/// A duration string that Go's `time.ParseDuration` does not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration `{0}`: expected e.g. `5m`, `30s`, `1h30m`, `500ms`")]
pub struct ParseDurationError(String);

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`). A negative duration means "disabled"
/// in Packer's options and becomes zero.
pub fn parse_go_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let error = || ParseDurationError(text.to_owned());
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(error());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(error)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| error())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(error()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Ok(if negative {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(total)
    })
}

fn go_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_go_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let cases = [
            ("5m", 300_000),
            ("30s", 30_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1.5h", 5_400_000),
            ("0", 0),
            ("-1s", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_go_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
        for bad in ["", "5", "m", "5 m", "5d", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_packer_names() {
        let config: SshConfig = serde_json_like(
            r#"{"ssh_username":"root","ssh_password":"hunter2","ssh_timeout":"30s","ssh_port":2222}"#,
        );
        assert_eq!(config.ssh_timeout, Duration::from_secs(30));
        assert_eq!(config.ssh_keep_alive_interval, Duration::from_secs(5));
        assert_eq!(config.ssh_port, 2222);
        assert_eq!(config.ssh_handshake_attempts, 10);
        assert_eq!(format!("{config:?}").matches("hunter2").count(), 0);
    }

    #[test]
    fn ssh_timeout_defaults_to_five_minutes_and_port_to_22() {
        let config = serde_json_like(r#"{"ssh_username":"root"}"#);
        assert_eq!(config.ssh_timeout, Duration::from_secs(5 * 60));
        assert_eq!(config.ssh_port, 22);
    }

    fn serde_json_like(text: &str) -> SshConfig {
        serde_json::from_str(text).unwrap()
    }
}
