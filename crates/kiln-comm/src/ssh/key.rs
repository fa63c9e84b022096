//! SSH keys: ephemeral client keys made by builders, and host-key verification.

use std::fmt;
use std::sync::Arc;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};

/// A client key pair. Builders make one per build with [`SshKey::generate_ed25519`] and put
/// [`SshKey::authorized_keys_line`] on the machine (cloud-init, a seed, a container mount).
#[derive(Clone)]
pub struct SshKey(Arc<PrivateKey>);

/// The operating system could not provide random bytes for a key.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate an SSH key: no system randomness ({0})")]
pub struct GenerateKeyError(String);

impl SshKey {
    /// A fresh Ed25519 key pair, commented `kiln`.
    pub fn generate_ed25519() -> Result<SshKey, GenerateKeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| GenerateKeyError(e.to_string()))?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("kiln");
        Ok(SshKey(Arc::new(key)))
    }

    /// Wraps an existing private key.
    pub fn from_private_key(key: PrivateKey) -> SshKey {
        SshKey(Arc::new(key))
    }

    /// The public key as one `authorized_keys` line: `ssh-ed25519 AAAA... kiln`.
    pub fn authorized_keys_line(&self) -> String {
        self.0
            .public_key()
            .to_openssh()
            .expect("encoding a public key in memory cannot fail")
    }

    /// The private key in OpenSSH PEM form, e.g. to write a key file for `ansible`.
    pub fn private_key_pem(&self) -> String {
        self.0
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .expect("encoding an unencrypted key in memory cannot fail")
            .to_string()
    }

    pub fn public_key(&self) -> &PublicKey {
        self.0.public_key()
    }

    pub(crate) fn private_key(&self) -> Arc<PrivateKey> {
        self.0.clone()
    }
}

impl fmt::Debug for SshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SshKey({})", fingerprint(self.public_key()))
    }
}

/// The fingerprint of a public key as OpenSSH prints it: `SHA256:` and unpadded base64.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Why the server's host key was trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyTrust {
    /// It is the key the builder said the machine has.
    Known,
    /// Its fingerprint matches `ssh_host_key_fingerprint`.
    Pinned,
    /// Nothing was known about the machine; the key was accepted on first use and is now
    /// required for the rest of the build (reconnects included).
    FirstUse,
}

/// The host key a connection was verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyInfo {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key itself in OpenSSH `TYPE BASE64` form, for `known_hosts` files (e.g. ansible's).
    pub public_key: String,
    pub trust: HostKeyTrust,
}

/// What a server's host key must be.
#[derive(Debug, Clone)]
pub(crate) enum HostKeyPolicy {
    Known(PublicKey),
    Pinned(String),
    FirstUse,
}

impl HostKeyPolicy {
    /// `Ok(trust)` when `key` is acceptable, `Err(expected)` otherwise.
    pub(crate) fn check(&self, key: &PublicKey) -> Result<HostKeyTrust, String> {
        match self {
            HostKeyPolicy::Known(known) if known.key_data() == key.key_data() => {
                Ok(HostKeyTrust::Known)
            }
            HostKeyPolicy::Known(known) => Err(fingerprint(known)),
            HostKeyPolicy::Pinned(pin) if pin.trim_end_matches('=') == fingerprint(key) => {
                Ok(HostKeyTrust::Pinned)
            }
            HostKeyPolicy::Pinned(pin) => Err(pin.clone()),
            HostKeyPolicy::FirstUse => Ok(HostKeyTrust::FirstUse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_print_as_openssh() {
        let a = SshKey::generate_ed25519().unwrap();
        let b = SshKey::generate_ed25519().unwrap();
        assert!(a.authorized_keys_line().starts_with("ssh-ed25519 AAAA"));
        assert!(a.authorized_keys_line().ends_with(" kiln"));
        assert_ne!(a.authorized_keys_line(), b.authorized_keys_line());
        assert!(fingerprint(a.public_key()).starts_with("SHA256:"));
        assert!(a.private_key_pem().contains("BEGIN OPENSSH PRIVATE KEY"));
    }

    #[test]
    fn policies() {
        let a = SshKey::generate_ed25519().unwrap();
        let b = SshKey::generate_ed25519().unwrap();
        let known = HostKeyPolicy::Known(a.public_key().clone());
        assert_eq!(known.check(a.public_key()), Ok(HostKeyTrust::Known));
        assert_eq!(
            known.check(b.public_key()),
            Err(fingerprint(a.public_key()))
        );
        let pinned = HostKeyPolicy::Pinned(fingerprint(b.public_key()));
        assert_eq!(pinned.check(b.public_key()), Ok(HostKeyTrust::Pinned));
        assert!(pinned.check(a.public_key()).is_err());
        assert_eq!(
            HostKeyPolicy::FirstUse.check(a.public_key()),
            Ok(HostKeyTrust::FirstUse)
        );
    }
}
