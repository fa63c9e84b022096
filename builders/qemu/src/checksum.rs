//! `iso_checksum`: parsing the forms Packer accepts, finding a file's line in a SUMS file, and
//! hashing (whole files, or a download as it streams by).

use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256, Sha512};

use crate::fetch::Location;

/// A digest algorithm `iso_checksum` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Guesses the algorithm from a hex digest's length.
    fn from_hex_len(len: usize) -> Option<Algorithm> {
        match len {
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A digest the source must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: Algorithm,
    /// Lowercase hex.
    pub hex: String,
}

impl Digest {
    /// Parses a hex digest; with `algorithm` unset it is guessed from the length.
    fn parse(algorithm: Option<Algorithm>, hex: &str) -> Option<Digest> {
        let hex = hex.to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let guessed = Algorithm::from_hex_len(hex.len())?;
        if algorithm.is_some_and(|a| a != guessed) {
            return None;
        }
        Some(Digest {
            algorithm: guessed,
            hex,
        })
    }

    /// Compares a computed digest with this one; `what` names the source in the error.
    pub fn check(&self, got: String, what: String) -> Result<(), VerifyError> {
        if got == self.hex {
            return Ok(());
        }
        Err(VerifyError::Mismatch {
            what,
            algorithm: self.algorithm,
            expected: self.hex.clone(),
            got,
        })
    }
}

/// What the source must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// `none`, written explicitly.
    None,
    Digest(Digest),
    /// `file:PATH`, `file:file:///PATH` or `file:http(s)://...`: a SUMS file listing the source by
    /// file name.
    SumsFile(Location),
}

/// An `iso_checksum` value Kiln does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseChecksumError {
    #[error(
        "`iso_checksum` `{0}`: expected `sha256:HEX`, `sha512:HEX`, `file:PATH-OR-URL` or `none`"
    )]
    Form(String),
    #[error("`iso_checksum` names the unsupported algorithm `{0}` (use sha256 or sha512)")]
    Algorithm(String),
    #[error("`iso_checksum` digest `{0}` is not a sha256 or sha512 hex digest")]
    Digest(String),
}

/// Why the source was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the {algorithm} of `{what}` is {got}, but `iso_checksum` expects {expected}", algorithm = algorithm.name())]
    Mismatch {
        /// The path or URL of the source.
        what: String,
        algorithm: Algorithm,
        expected: String,
        got: String,
    },
    #[error("the checksum file `{sums}` has no line for `{name}`")]
    NotListed { sums: String, name: String },
}

impl Checksum {
    pub fn parse(text: &str) -> Result<Checksum, ParseChecksumError> {
        let text = text.trim();
        if text == "none" {
            return Ok(Checksum::None);
        }
        if let Some(rest) = text.strip_prefix("file:") {
            return match Location::parse(rest) {
                Some(Location::Local(path)) if path.as_os_str().is_empty() => {
                    Err(ParseChecksumError::Form(text.to_string()))
                }
                Some(location) => Ok(Checksum::SumsFile(location)),
                None => Err(ParseChecksumError::Form(text.to_string())),
            };
        }
        let (algorithm, hex) = match text.split_once(':') {
            Some(("sha256", hex)) => (Some(Algorithm::Sha256), hex),
            Some(("sha512", hex)) => (Some(Algorithm::Sha512), hex),
            Some((other, _)) => return Err(ParseChecksumError::Algorithm(other.to_string())),
            None => (None, text),
        };
        Digest::parse(algorithm, hex)
            .map(Checksum::Digest)
            .ok_or_else(|| ParseChecksumError::Digest(hex.to_string()))
    }
}

/// Finds the digest of the file called `name` in the text of a SUMS file (`HEX  NAME` or
/// `HEX *NAME` lines; a listed path matches by its last component).
pub fn listed_digest(text: &str, name: &str) -> Option<Digest> {
    text.lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .filter(|(_, file)| {
            let file = file.trim().trim_start_matches('*');
            file == name || file.rsplit('/').next() == Some(name)
        })
        .find_map(|(hex, _)| Digest::parse(None, hex))
}

/// A running digest, fed as data arrives.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Lowercase hex digest.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Lowercase hex digest of a file (blocking: reads the whole file).
pub fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Hasher::new(algorithm);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_packer_forms() {
        assert_eq!(Checksum::parse("none"), Ok(Checksum::None));
        let want = Checksum::Digest(Digest {
            algorithm: Algorithm::Sha256,
            hex: EMPTY_SHA256.into(),
        });
        assert_eq!(
            Checksum::parse(&format!("sha256:{EMPTY_SHA256}")),
            Ok(want.clone())
        );
        assert_eq!(Checksum::parse(&EMPTY_SHA256.to_uppercase()), Ok(want));
        assert_eq!(
            Checksum::parse("file:file:///srv/SHA256SUMS"),
            Ok(Checksum::SumsFile(Location::Local(
                "/srv/SHA256SUMS".into()
            )))
        );
        assert_eq!(
            Checksum::parse("file:https://example.com/SHA256SUMS"),
            Ok(Checksum::SumsFile(Location::Remote(
                "https://example.com/SHA256SUMS".parse().unwrap()
            )))
        );
        assert!(matches!(
            Checksum::parse("md5:abc"),
            Err(ParseChecksumError::Algorithm(_))
        ));
        assert!(matches!(
            Checksum::parse("sha512:abcd"),
            Err(ParseChecksumError::Digest(_))
        ));
        assert!(matches!(
            Checksum::parse(&format!("sha512:{EMPTY_SHA256}")),
            Err(ParseChecksumError::Digest(_))
        ));
        assert!(Checksum::parse("file:ftp://example.com/SUMS").is_err());
        assert!(Checksum::parse("file:").is_err());
    }

    #[test]
    fn finds_lines_in_sums_files() {
        let text = format!(
            "{}  other\n{EMPTY_SHA256} *disk.qcow2\n{}  sub/dir/deep.img\n",
            "1".repeat(64),
            "2".repeat(128)
        );
        assert_eq!(
            listed_digest(&text, "disk.qcow2").map(|d| d.hex),
            Some(EMPTY_SHA256.to_string())
        );
        assert_eq!(
            listed_digest(&text, "deep.img").map(|d| d.algorithm),
            Some(Algorithm::Sha512)
        );
        assert_eq!(listed_digest(&text, "missing.qcow2"), None);
    }

    #[test]
    fn hashes_files_and_streams_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(hash_file(&path, Algorithm::Sha256).unwrap(), EMPTY_SHA256);
        std::fs::write(&path, b"kiln").unwrap();
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"ki");
        h.update(b"ln");
        assert_eq!(h.finish(), hash_file(&path, Algorithm::Sha512).unwrap());
    }
}
