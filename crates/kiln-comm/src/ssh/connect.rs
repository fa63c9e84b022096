//! Establishing the SSH session: TCP, banner, host-key check and login, retried with a short
//! backoff until `ssh_timeout`; optionally through a bastion.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::MethodKind;
use tokio::net::TcpStream;

use super::config::{Secret, SshConfig};
use super::key::{fingerprint, HostKeyInfo, HostKeyPolicy, SshKey};

/// First pause between attempts; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// While an attempt waits for the server, another starts this often.
const STAGGER: Duration = Duration::from_secs(1);
/// At most this many attempts wait at once.
const MAX_IN_FLIGHT: usize = 4;
/// A server that accepted TCP but has not finished the handshake within this time is given up
/// on and dialled again (a NAT port forward accepts before the machine is up).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(15);

/// Why connecting failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no SSH login to {target} after {}", format_waited(*.waited))]
    TimedOut {
        target: String,
        waited: Duration,
        #[source]
        last: AttemptError,
    },
    #[error("the host key of {target} is {got}, expected {expected}")]
    HostKeyMismatch {
        target: String,
        expected: String,
        got: String,
    },
    #[error("{target} rejected the login as `{user}` {attempts} times (ssh_handshake_attempts)")]
    AuthRejected {
        target: String,
        user: String,
        attempts: u32,
    },
    #[error("cannot load the private key `{}`", path.display())]
    LoadKey {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },
    #[error("`{0}` is not set")]
    Missing(&'static str),
    #[error(
        "no login method: set `ssh_password` or `ssh_private_key_file`, or give an ephemeral key"
    )]
    NoCredentials,
}

/// Why one connection attempt failed; the last one is reported when `ssh_timeout` runs out.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("cannot open a TCP connection to {target}")]
    Tcp {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target} accepted the connection but sent no SSH banner within {}", format_waited(*.waited))]
    NoBanner { target: String, waited: Duration },
    #[error("{target} stopped answering during the login (waited {})", format_waited(*.waited))]
    LoginStalled { target: String, waited: Duration },
    #[error("the SSH handshake with {target} failed")]
    Handshake {
        target: String,
        #[source]
        source: Box<russh::Error>,
    },
    #[error("{target} rejected the login as `{user}` (it offers: {offered})")]
    AuthRejected {
        target: String,
        user: String,
        offered: String,
    },
    #[error("cannot open a tunnel through the bastion to {target}")]
    Tunnel {
        target: String,
        #[source]
        source: Box<russh::Error>,
    },
}

impl AttemptError {
    /// Whether the attempt ran out of time before `HANDSHAKE_LIMIT`, i.e. hit `ssh_timeout`.
    fn cut_short(&self) -> bool {
        match self {
            AttemptError::NoBanner { waited, .. } | AttemptError::LoginStalled { waited, .. } => {
                *waited < HANDSHAKE_LIMIT
            }
            _ => false,
        }
    }
}

fn format_waited(waited: Duration) -> String {
    format!("{:.1}s", waited.as_secs_f64())
}

/// Who to log in as and how.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub keys: Vec<SshKey>,
}

impl Login {
    fn target(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Everything needed to (re)connect, resolved once from [`SshConfig`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub machine: Login,
    pub bastion: Option<Login>,
    pub timeout: Duration,
    pub handshake_attempts: u32,
    pub client: Arc<client::Config>,
}

/// How the machine's and the jump host's keys are judged.
#[derive(Debug, Clone)]
pub(crate) struct Trust {
    pub machine: HostKeyPolicy,
    pub bastion: HostKeyPolicy,
}

impl Trust {
    /// After a first-use acceptance, the same key is required from then on (reconnects
    /// included).
    pub fn remember(&self, keys: &HostKeys) -> Trust {
        Trust {
            machine: remember(&self.machine, &keys.machine),
            bastion: match &keys.bastion {
                Some(info) => remember(&self.bastion, info),
                None => self.bastion.clone(),
            },
        }
    }
}

/// The host keys a session was opened with.
#[derive(Debug, Clone)]
pub(crate) struct HostKeys {
    pub machine: HostKeyInfo,
    pub bastion: Option<HostKeyInfo>,
}

impl Settings {
    pub fn from_config(config: &SshConfig) -> Result<(Settings, Trust), ConnectError> {
        let user = config
            .ssh_username
            .clone()
            .ok_or(ConnectError::Missing("ssh_username"))?;
        let machine = login(
            config
                .ssh_host
                .clone()
                .ok_or(ConnectError::Missing("ssh_host"))?,
            config.ssh_port,
            user.clone(),
            config.ssh_password.clone(),
            config.ssh_private_key_file.as_deref(),
            config.ephemeral_key.clone(),
        )?;
        let bastion = match &config.ssh_bastion_host {
            Some(host) => Some(login(
                host.clone(),
                config.ssh_bastion_port,
                config.ssh_bastion_username.clone().unwrap_or(user),
                config.ssh_bastion_password.clone(),
                config.ssh_bastion_private_key_file.as_deref(),
                config.ephemeral_key.clone(),
            )?),
            None => None,
        };
        let keep_alive = config.ssh_keep_alive_interval;
        let client = client::Config {
            keepalive_interval: (!keep_alive.is_zero()).then_some(keep_alive),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        let machine_policy = match (&config.known_host_key, &config.ssh_host_key_fingerprint) {
            (Some(key), _) => HostKeyPolicy::Known(key.clone()),
            (None, Some(pin)) => HostKeyPolicy::Pinned(pin.clone()),
            (None, None) => HostKeyPolicy::FirstUse,
        };
        let trust = Trust {
            machine: machine_policy,
            bastion: config
                .ssh_bastion_host_key_fingerprint
                .clone()
                .map_or(HostKeyPolicy::FirstUse, HostKeyPolicy::Pinned),
        };
        let settings = Settings {
            machine,
            bastion,
            timeout: config.ssh_timeout,
            handshake_attempts: config.ssh_handshake_attempts.max(1),
            client: Arc::new(client),
        };
        Ok((settings, trust))
    }
}

fn login(
    host: String,
    port: u16,
    user: String,
    password: Option<Secret>,
    key_file: Option<&Path>,
    ephemeral: Option<SshKey>,
) -> Result<Login, ConnectError> {
    let mut keys: Vec<SshKey> = ephemeral.into_iter().collect();
    if let Some(path) = key_file {
        let key =
            russh::keys::load_secret_key(path, None).map_err(|source| ConnectError::LoadKey {
                path: path.to_owned(),
                source,
            })?;
        keys.push(SshKey::from_private_key(key));
    }
    if keys.is_empty() && password.is_none() {
        return Err(ConnectError::NoCredentials);
    }
    Ok(Login {
        host,
        port,
        user,
        password,
        keys,
    })
}

/// An authenticated session, with the bastion session that carries it (kept alive with it).
pub(crate) struct Session {
    pub handle: Handle<Client>,
    _bastion: Option<Handle<Client>>,
}

/// Connects, retrying until `settings.timeout`. Host-key mismatches fail at once; rejected
/// logins fail after `handshake_attempts`.
///
/// Attempts overlap: while one waits for a banner, another is dialled every [`STAGGER`] (at most
/// [`MAX_IN_FLIGHT`] at a time), and the first to log in wins. A NAT port forward (QEMU's
/// user-mode networking) accepts at once and then holds the connection while it retransmits
/// its SYN to a guest that is still booting, seconds apart; a fresh dial reaches sshd as soon
/// as it listens, so readiness is seen within about a second.
pub(crate) async fn connect(
    settings: &Settings,
    trust: &Trust,
) -> Result<(Session, HostKeys), ConnectError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let started = Instant::now();
    let deadline = started + settings.timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut rejections = 0;
    let mut last: Option<AttemptError> = None;
    let mut in_flight = FuturesUnordered::new();
    // When the next attempt may start.
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline && in_flight.is_empty() {
            return Err(ConnectError::TimedOut {
                target: settings.machine.target(),
                waited: started.elapsed(),
                last: last.unwrap_or(AttemptError::NoBanner {
                    target: settings.machine.target(),
                    waited: started.elapsed(),
                }),
            });
        }
        if in_flight.len() < MAX_IN_FLIGHT && now >= next && now < deadline {
            let left = deadline.saturating_duration_since(now);
            in_flight.push(attempt(settings, trust, left));
            next = now + STAGGER;
        }
        // Wake to start another attempt, unless no more may start; each attempt ends by the
        // deadline on its own.
        let wake = (in_flight.len() < MAX_IN_FLIGHT && now < deadline)
            .then(|| tokio::time::Instant::from_std(next.min(deadline)));
        let error = tokio::select! {
            Some(result) = in_flight.next() => match result {
                Ok(done) => return Ok(done),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(error)) => error,
            },
            _ = sleep_until_some(wake), if wake.is_some() => continue,
        };
        if let AttemptError::AuthRejected { target, user, .. } = &error {
            rejections += 1;
            if rejections >= settings.handshake_attempts {
                return Err(ConnectError::AuthRejected {
                    target: target.clone(),
                    user: user.clone(),
                    attempts: rejections,
                });
            }
        }
        // An attempt cut short by `ssh_timeout` says less than the one before it.
        let reason = match last.take() {
            Some(before) if error.cut_short() => before,
            _ => error,
        };
        if in_flight.is_empty() && Instant::now() + backoff >= deadline {
            return Err(ConnectError::TimedOut {
                target: settings.machine.target(),
                waited: started.elapsed(),
                last: reason,
            });
        }
        last = Some(reason);
        // A failed attempt (refused, reset) is followed by the next one after the backoff.
        next = next.min(Instant::now() + backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

enum Failure {
    Retry(AttemptError),
    Fatal(ConnectError),
}

async fn attempt(
    settings: &Settings,
    trust: &Trust,
    left: Duration,
) -> Result<(Session, HostKeys), Failure> {
    let (bastion, bastion_key) = match &settings.bastion {
        Some(login) => {
            let (handle, key) = open(login, None, &trust.bastion, settings, left).await?;
            (Some(handle), Some(key))
        }
        None => (None, None),
    };
    let (handle, machine_key) = open(
        &settings.machine,
        bastion.as_ref(),
        &trust.machine,
        settings,
        left,
    )
    .await?;
    let session = Session {
        handle,
        _bastion: bastion,
    };
    let keys = HostKeys {
        machine: machine_key,
        bastion: bastion_key,
    };
    Ok((session, keys))
}

/// One connection and login to `login`, directly or through `via`.
async fn open(
    login: &Login,
    via: Option<&Handle<Client>>,
    policy: &HostKeyPolicy,
    settings: &Settings,
    left: Duration,
) -> Result<(Handle<Client>, HostKeyInfo), Failure> {
    let target = login.target();
    let limit = left.min(HANDSHAKE_LIMIT);
    let seen = Arc::new(Mutex::new(None));
    let client = Client {
        policy: policy.clone(),
        seen: seen.clone(),
    };
    let handshake = async {
        match via {
            None => {
                let tcp = TcpStream::connect((login.host.as_str(), login.port))
                    .await
                    .map_err(|source| AttemptError::Tcp {
                        target: target.clone(),
                        source,
                    })?;
                tcp.set_nodelay(true).ok();
                client::connect_stream(settings.client.clone(), tcp, client).await
            }
            Some(bastion) => {
                let channel = bastion
                    .channel_open_direct_tcpip(&login.host, login.port.into(), "127.0.0.1", 0)
                    .await
                    .map_err(|source| AttemptError::Tunnel {
                        target: target.clone(),
                        source: Box::new(source),
                    })?;
                client::connect_stream(settings.client.clone(), channel.into_stream(), client).await
            }
        }
        .map_err(|source| AttemptError::Handshake {
            target: target.clone(),
            source: Box::new(source),
        })
    };
    let until = tokio::time::Instant::now() + limit;
    let result = tokio::time::timeout_at(until, handshake).await;
    let seen = seen.lock().unwrap().take();
    let (mut handle, host_key) = match (result, seen) {
        (_, Some(Err((expected, got)))) => {
            return Err(Failure::Fatal(ConnectError::HostKeyMismatch {
                target,
                expected,
                got,
            }))
        }
        (Ok(Ok(handle)), Some(Ok(host_key))) => (handle, host_key),
        (Ok(Ok(_)), None) => unreachable!("russh checks the server key before the handshake ends"),
        (Ok(Err(error)), _) => return Err(Failure::Retry(error)),
        (Err(_), _) => {
            return Err(Failure::Retry(AttemptError::NoBanner {
                target,
                waited: limit,
            }))
        }
    };
    match tokio::time::timeout_at(until, authenticate(&mut handle, login)).await {
        Ok(Ok(())) => Ok((handle, host_key)),
        Ok(Err(error)) => Err(Failure::Retry(error)),
        Err(_) => Err(Failure::Retry(AttemptError::LoginStalled {
            target,
            waited: limit,
        })),
    }
}

async fn authenticate(handle: &mut Handle<Client>, login: &Login) -> Result<(), AttemptError> {
    let target = login.target();
    let handshake = |source| AttemptError::Handshake {
        target: target.clone(),
        source: Box::new(source),
    };
    let mut offered = String::from("nothing");
    for key in &login.keys {
        // Only RSA keys need a signature hash, taken from what the server says it supports.
        let hash = if key.public_key().algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(handshake)?
                .flatten()
        } else {
            None
        };
        let key = PrivateKeyWithHashAlg::new(key.private_key(), hash);
        match handle
            .authenticate_publickey(&login.user, key)
            .await
            .map_err(handshake)?
        {
            client::AuthResult::Success => return Ok(()),
            client::AuthResult::Failure {
                remaining_methods, ..
            } => offered = methods(&remaining_methods),
        }
    }
    if let Some(password) = &login.password {
        match handle
            .authenticate_password(&login.user, password.expose())
            .await
            .map_err(handshake)?
        {
            client::AuthResult::Success => return Ok(()),
            client::AuthResult::Failure {
                remaining_methods, ..
            } => offered = methods(&remaining_methods),
        }
    }
    Err(AttemptError::AuthRejected {
        target: login.target(),
        user: login.user.clone(),
        offered,
    })
}

fn methods(set: &russh::MethodSet) -> String {
    let names: Vec<&str> = set
        .iter()
        .map(|kind| match kind {
            MethodKind::None => "none",
            MethodKind::Password => "password",
            MethodKind::PublicKey => "publickey",
            MethodKind::HostBased => "hostbased",
            MethodKind::KeyboardInteractive => "keyboard-interactive",
            _ => "other",
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The host key accepted, or refused as `(expected, got)`.
type Verdict = Result<HostKeyInfo, (String, String)>;

/// The russh event handler: verifies the host key and records what it saw.
pub(crate) struct Client {
    policy: HostKeyPolicy,
    /// `Ok(info)` when accepted, `Err((expected, got))` when refused.
    seen: Arc<Mutex<Option<Verdict>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key: &PublicKey = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                // Host certificates are not supported: judge the key inside the certificate.
                return self.judge(&PublicKey::from(cert.public_key().clone()));
            }
        };
        self.judge(key)
    }
}

impl Client {
    fn judge(&self, key: &PublicKey) -> Result<bool, russh::Error> {
        let got = fingerprint(key);
        let verdict = self.policy.check(key).map(|trust| HostKeyInfo {
            fingerprint: got.clone(),
            public_key: key.to_openssh().unwrap_or_default(),
            trust,
        });
        let accepted = verdict.is_ok();
        *self.seen.lock().unwrap() = Some(verdict.map_err(|expected| (expected, got)));
        Ok(accepted)
    }
}

/// After a first-use acceptance, the same key is required from then on.
fn remember(policy: &HostKeyPolicy, info: &HostKeyInfo) -> HostKeyPolicy {
    match policy {
        HostKeyPolicy::FirstUse => HostKeyPolicy::Pinned(info.fingerprint.clone()),
        _ => policy.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's keep-alive interval for `ssh_keep_alive_interval` (`None`: the default).
    fn keep_alive(interval: Option<&str>) -> Option<Duration> {
        let mut config = SshConfig {
            ssh_host: Some("127.0.0.1".into()),
            ssh_username: Some("root".into()),
            ssh_password: Some(Secret::new("x")),
            ..Default::default()
        };
        if let Some(text) = interval {
            config.ssh_keep_alive_interval = super::super::parse_go_duration(text).unwrap();
        }
        let (settings, _) = Settings::from_config(&config).unwrap();
        settings.client.keepalive_interval
    }

    #[test]
    fn a_zero_keep_alive_interval_disables_keep_alives() {
        assert_eq!(keep_alive(Some("0s")), None);
        assert_eq!(keep_alive(Some("0")), None);
        assert_eq!(
            keep_alive(Some("-1s")),
            None,
            "negative means disabled in Packer"
        );
        assert_eq!(keep_alive(Some("5s")), Some(Duration::from_secs(5)));
        assert_eq!(keep_alive(Some("250ms")), Some(Duration::from_millis(250)));
        assert_eq!(
            keep_alive(None),
            Some(Duration::from_secs(5)),
            "the default"
        );
    }
}
