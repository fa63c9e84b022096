//! `cd_files` / `cd_content` / `cd_label`: an extra CD-ROM made for the build (kickstart,
//! preseed, autounattend or a cloud-init seed of the user's own), staged in the runtime
//! directory and written with Debian's `genisoimage` (Rock Ridge and Joliet names).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tokio::process::Command;

/// What goes on the CD.
#[derive(Debug, Clone, PartialEq)]
pub struct CdSpec {
    /// Paths or globs, relative to the current directory.
    pub files: Vec<String>,
    /// Path on the CD → content.
    pub content: BTreeMap<String, String>,
    pub label: Option<String>,
}

/// Why the CD could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CdError {
    #[error("`cd_files` entry `{0}` matches nothing")]
    NoMatch(String),
    #[error("`cd_files` entry `{0}` is not a valid pattern")]
    Pattern(String, #[source] glob::PatternError),
    #[error("cannot copy `{}` onto the CD", .0.display())]
    Copy(PathBuf, #[source] std::io::Error),
    #[error("`{0}` cannot be a path on the CD: it must be relative, without `..`")]
    BadPath(String),
    #[error("cannot run `genisoimage` (install Debian's `genisoimage` package)")]
    Spawn(#[source] std::io::Error),
    #[error("`genisoimage` failed: {0}")]
    Failed(String),
}

/// Checks a `cd_content` key: relative, no `..`.
pub fn check_cd_path(path: &str) -> Result<PathBuf, CdError> {
    let rel = Path::new(path.trim_start_matches('/'));
    if path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CdError::BadPath(path.to_string()));
    }
    Ok(rel.to_owned())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), CdError> {
    let err = |p: &Path| {
        let p = p.to_owned();
        move |e| CdError::Copy(p, e)
    };
    // Follow symlinks: the link's target is what lands on the CD (as Packer does).
    let meta = std::fs::metadata(from).map_err(err(from))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(err(from))?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(err(from))?
            .collect::<Result<_, _>>()
            .map_err(err(from))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(err(from))?;
        }
        std::fs::copy(from, to).map_err(err(from))?;
    }
    Ok(())
}

/// Copies the files and contents into `stage` (which must not exist yet).
pub fn stage(spec: &CdSpec, stage: &Path) -> Result<(), CdError> {
    std::fs::create_dir_all(stage).map_err(|e| CdError::Copy(stage.to_owned(), e))?;
    for entry in &spec.files {
        let contents_only = entry.ends_with('/');
        let pattern = entry.trim_end_matches('/');
        let paths: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| CdError::Pattern(entry.clone(), e))?
            .filter_map(Result::ok)
            .collect();
        if paths.is_empty() {
            return Err(CdError::NoMatch(entry.clone()));
        }
        for path in paths {
            let target = match (contents_only && path.is_dir(), path.file_name()) {
                (true, _) | (false, None) => stage.to_owned(),
                (false, Some(name)) => stage.join(name),
            };
            copy_tree(&path, &target)?;
        }
    }
    for (path, content) in &spec.content {
        let target = stage.join(check_cd_path(path)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CdError::Copy(target.clone(), e))?;
        }
        std::fs::write(&target, content).map_err(|e| CdError::Copy(target.clone(), e))?;
    }
    Ok(())
}

/// Writes the ISO image `iso` from the directory `dir`, labelled `label`.
pub async fn genisoimage(dir: &Path, iso: &Path, label: Option<&str>) -> Result<(), CdError> {
    let mut command = Command::new("genisoimage");
    command.arg("-quiet").arg("-output").arg(iso).args([
        "-input-charset",
        "utf-8",
        "-joliet",
        "-rock",
    ]);
    if let Some(label) = label {
        command.args(["-volid", label]);
    }
    let out = command
        .arg(dir)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(CdError::Spawn)?;
    if !out.status.success() {
        return Err(CdError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                if p.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(base, &p, out);
                } else {
                    out.push(format!("{rel}={}", std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn files_directories_globs_and_content() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("a.cfg"), "a").unwrap();
        std::fs::write(src.join("b.cfg"), "b").unwrap();
        std::fs::write(src.join("dir/x"), "x").unwrap();
        std::fs::write(src.join("dir/sub/y"), "y").unwrap();
        let s = |p: &str| src.join(p).display().to_string();
        let spec = CdSpec {
            files: vec![s("*.cfg"), s("dir"), format!("{}/", s("dir/sub"))],
            content: [("meta/data".to_string(), "m".to_string())].into(),
            label: None,
        };
        let out = t.path().join("stage");
        stage(&spec, &out).unwrap();
        assert_eq!(
            listing(&out),
            [
                "a.cfg=a",
                "b.cfg=b",
                "dir/",
                "dir/sub/",
                "dir/sub/y=y",
                "dir/x=x",
                "meta/",
                "meta/data=m",
                "y=y"
            ]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope*").display().to_string();
        let spec = CdSpec {
            files: vec![missing.clone()],
            content: BTreeMap::new(),
            label: None,
        };
        let err = stage(&spec, &t.path().join("stage")).unwrap_err();
        assert!(err.to_string().contains(&missing), "{err}");
        assert!(check_cd_path("../etc/passwd").is_err());
        assert!(check_cd_path("").is_err());
        assert_eq!(check_cd_path("/a/b").unwrap(), PathBuf::from("a/b"));
    }
}
