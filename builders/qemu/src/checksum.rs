//! `iso_checksum`: parsing the forms Packer accepts and checking a local file against it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha512};

/// A digest algorithm `iso_checksum` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
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

/// What the source must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// `none`, written explicitly.
    None,
    Digest {
        algorithm: Algorithm,
        hex: String,
    },
    /// `file:PATH` or `file:file:///PATH`: a SUMS file listing the source by file name.
    SumsFile(PathBuf),
}

/// An `iso_checksum` value Kiln does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseChecksumError {
    #[error("`iso_checksum` `{0}`: expected `sha256:HEX`, `sha512:HEX`, `file:PATH` or `none`")]
    Form(String),
    #[error("`iso_checksum` names the unsupported algorithm `{0}` (use sha256 or sha512)")]
    Algorithm(String),
    #[error("`iso_checksum` digest `{0}` is not a sha256 or sha512 hex digest")]
    Digest(String),
}

/// Why the source was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {algorithm} of `{}` is {got}, but `iso_checksum` expects {expected}", path.display(), algorithm = algorithm.name())]
    Mismatch {
        path: PathBuf,
        algorithm: Algorithm,
        expected: String,
        got: String,
    },
    #[error("the checksum file `{}` has no line for `{name}`", sums.display())]
    NotListed { sums: PathBuf, name: String },
}

impl Checksum {
    pub fn parse(text: &str) -> Result<Checksum, ParseChecksumError> {
        let text = text.trim();
        if text == "none" {
            return Ok(Checksum::None);
        }
        if let Some(rest) = text.strip_prefix("file:") {
            let path = rest.strip_prefix("file://").unwrap_or(rest);
            if path.is_empty() || path.contains("://") {
                return Err(ParseChecksumError::Form(text.to_string()));
            }
            return Ok(Checksum::SumsFile(PathBuf::from(path)));
        }
        let (algorithm, hex) = match text.split_once(':') {
            Some(("sha256", hex)) => (Some(Algorithm::Sha256), hex),
            Some(("sha512", hex)) => (Some(Algorithm::Sha512), hex),
            Some((other, _)) => return Err(ParseChecksumError::Algorithm(other.to_string())),
            None => (None, text),
        };
        digest(algorithm, hex).ok_or_else(|| ParseChecksumError::Digest(hex.to_string()))
    }

    /// Checks `path` (blocking: reads the whole file).
    pub fn verify(&self, path: &Path) -> Result<(), VerifyError> {
        let (algorithm, expected) = match self {
            Checksum::None => return Ok(()),
            Checksum::Digest { algorithm, hex } => (*algorithm, hex.clone()),
            Checksum::SumsFile(sums) => listed_digest(sums, path)?,
        };
        let got = hash_file(path, algorithm).map_err(|source| VerifyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if got != expected {
            return Err(VerifyError::Mismatch {
                path: path.to_owned(),
                algorithm,
                expected,
                got,
            });
        }
        Ok(())
    }
}

fn digest(algorithm: Option<Algorithm>, hex: &str) -> Option<Checksum> {
    let hex = hex.to_ascii_lowercase();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let guessed = Algorithm::from_hex_len(hex.len())?;
    if algorithm.is_some_and(|a| a != guessed) {
        return None;
    }
    Some(Checksum::Digest {
        algorithm: guessed,
        hex,
    })
}

/// Finds `source`'s digest in a SUMS file (`HEX  NAME` or `HEX *NAME` lines).
fn listed_digest(sums: &Path, source: &Path) -> Result<(Algorithm, String), VerifyError> {
    let text = std::fs::read_to_string(sums).map_err(|e| VerifyError::Read {
        path: sums.to_owned(),
        source: e,
    })?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .filter(|(_, file)| {
            let file = file.trim().trim_start_matches('*');
            file == name || file.rsplit('/').next() == Some(name.as_str())
        })
        .find_map(|(hex, _)| match digest(None, hex)? {
            Checksum::Digest { algorithm, hex } => Some((algorithm, hex)),
            _ => None,
        })
        .ok_or_else(|| VerifyError::NotListed {
            sums: sums.to_owned(),
            name,
        })
}

/// Lowercase hex digest of a file.
pub fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    match algorithm {
        Algorithm::Sha256 => {
            let mut h = Sha256::new();
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(hex::encode(h.finalize()))
        }
        Algorithm::Sha512 => {
            let mut h = Sha512::new();
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(hex::encode(h.finalize()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_packer_forms() {
        assert_eq!(Checksum::parse("none"), Ok(Checksum::None));
        let want = Checksum::Digest {
            algorithm: Algorithm::Sha256,
            hex: EMPTY_SHA256.into(),
        };
        assert_eq!(
            Checksum::parse(&format!("sha256:{EMPTY_SHA256}")),
            Ok(want.clone())
        );
        assert_eq!(Checksum::parse(&EMPTY_SHA256.to_uppercase()), Ok(want));
        assert_eq!(
            Checksum::parse("file:file:///srv/SHA256SUMS"),
            Ok(Checksum::SumsFile("/srv/SHA256SUMS".into()))
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
        assert!(Checksum::parse("file:https://example.com/SUMS").is_err());
    }

    #[test]
    fn verifies_digests_and_sums_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.qcow2");
        std::fs::write(&disk, b"").unwrap();
        Checksum::parse(EMPTY_SHA256)
            .unwrap()
            .verify(&disk)
            .unwrap();
        let wrong = Checksum::parse(&"0".repeat(64)).unwrap();
        let err = wrong.verify(&disk).unwrap_err();
        assert!(matches!(err, VerifyError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains(EMPTY_SHA256), "{err}");

        let sums = dir.path().join("SHA256SUMS");
        std::fs::write(
            &sums,
            format!("{}  other\n{EMPTY_SHA256} *disk.qcow2\n", "1".repeat(64)),
        )
        .unwrap();
        Checksum::SumsFile(sums.clone()).verify(&disk).unwrap();
        std::fs::write(&sums, format!("{EMPTY_SHA256}  other\n")).unwrap();
        assert!(matches!(
            Checksum::SumsFile(sums).verify(&disk),
            Err(VerifyError::NotListed { .. })
        ));
    }
}
