//! The `file` provisioner: copies files and directories to the machine being built (or back
//! from it) through its communicator, with Packer's trailing-slash rules for directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_comm::{CommError, Communicator, UploadOptions, UploadSource};
use kiln_core::component::{OptionSpec, ProvisionCtx, Provisioner, ProvisionerKind, Registry};
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::plan::Config;
use serde::Deserialize;

/// The type name in templates.
pub const TYPE_NAME: &str = "file";

/// Adds the `file` provisioner.
pub fn register(registry: &mut Registry) {
    registry.add_provisioner(Arc::new(FileKind));
}

macro_rules! opt {
    ($name:literal, $ty:literal, $required:literal, $doc:literal) => {
        OptionSpec {
            name: $name,
            ty: $ty,
            required: $required,
            doc: $doc,
        }
    };
}

const OPTIONS: &[OptionSpec] = &[
    opt!(
        "source",
        "string",
        false,
        "The file or directory to copy; a trailing `/` on a directory copies its contents."
    ),
    opt!(
        "sources",
        "list(string)",
        false,
        "Several files or directories to copy into the `destination` directory."
    ),
    opt!(
        "content",
        "string",
        false,
        "Text to write to `destination` (upload only)."
    ),
    opt!(
        "destination",
        "string",
        true,
        "Where to copy to; a trailing `/` names a directory."
    ),
    opt!(
        "direction",
        "string",
        false,
        "`upload` (to the machine, the default) or `download` (from it)."
    ),
    opt!(
        "generated",
        "bool",
        false,
        "The local source is made during the build, so it is not checked beforehand."
    ),
];

/// The options as written (see `docs/provisioners/file.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    source: Option<String>,
    sources: Option<Vec<String>>,
    content: Option<String>,
    destination: String,
    direction: Option<String>,
    generated: bool,
}

/// What to copy.
#[derive(Debug, Clone)]
enum Work {
    Upload(Vec<String>),
    Content(String),
    Download(Vec<String>),
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot upload `{source_path}` to `{destination}`")]
    Upload {
        source_path: String,
        destination: String,
        #[source]
        source: CommError,
    },
    #[error("cannot download `{source_path}` to `{destination}`")]
    Download {
        source_path: String,
        destination: String,
        #[source]
        source: CommError,
    },
    #[error("cannot read `{0}`")]
    Local(String, #[source] std::io::Error),
}

struct FileKind;

impl ProvisionerKind for FileKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        let opts: Options = config.decode()?;
        let mut diags = Diagnostics::new();
        let download = match opts.direction.as_deref() {
            None | Some("upload") => false,
            Some("download") => true,
            Some(other) => {
                diags.push(
                    Diagnostic::error(format!(
                        "`direction` is `{other}`, expected `upload` or `download`"
                    ))
                    .at(config.span_of("direction")),
                );
                false
            }
        };
        if opts.destination.is_empty() {
            diags.push(Diagnostic::error("`destination` is empty").at(config.span));
        }
        let given = [
            opts.source.is_some(),
            opts.sources.is_some(),
            opts.content.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            diags.push(
                Diagnostic::error("`file` needs exactly one of `source`, `sources` or `content`")
                    .at(config.span),
            );
        }
        let sources: Vec<String> = opts
            .source
            .into_iter()
            .chain(opts.sources.into_iter().flatten())
            .collect();
        let work = match opts.content {
            Some(_) if download => {
                diags.push(
                    Diagnostic::error("`content` can only be uploaded")
                        .at(config.span_of("content")),
                );
                Work::Content(String::new())
            }
            Some(content) => Work::Content(content),
            None if download => Work::Download(sources),
            None => {
                if !opts.generated {
                    for source in &sources {
                        if !Path::new(source).exists() {
                            let key = if given[1] { "sources" } else { "source" };
                            diags.push(
                                Diagnostic::error(format!("`{source}` does not exist"))
                                    .at(config.span_of(key))
                                    .with_help(
                                        "set `generated = true` if an earlier step makes it",
                                    ),
                            );
                        }
                    }
                }
                Work::Upload(sources)
            }
        };
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Box::new(File {
            work,
            destination: opts.destination,
            many: given[1],
        }))
    }
}

struct File {
    work: Work,
    destination: String,
    /// `sources` was used: `destination` is a directory.
    many: bool,
}

/// The last path component of `path` (without a trailing `/`).
fn base_name(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// Where `source` goes under `destination`: into it when it names a directory (a trailing `/`, or
/// several sources), else `destination` itself.
fn target(destination: &str, source: &str, into_dir: bool) -> String {
    if into_dir || destination.ends_with('/') {
        format!(
            "{}/{}",
            destination.trim_end_matches('/'),
            base_name(source)
        )
    } else {
        destination.to_string()
    }
}

impl File {
    async fn upload(&self, comm: &dyn Communicator, source: &str) -> Result<(), FileError> {
        let opts = UploadOptions::default();
        let meta =
            std::fs::metadata(source).map_err(|e| FileError::Local(source.to_string(), e))?;
        let (destination, result) = if meta.is_dir() && source.ends_with('/') {
            // `dir/`: its contents go into the destination.
            let dest = self.destination.clone();
            let result = comm.upload_dir(Path::new(source), &dest, &opts).await;
            (dest, result)
        } else if meta.is_dir() {
            // `dir`: the directory itself goes into the destination.
            let dest = format!(
                "{}/{}",
                self.destination.trim_end_matches('/'),
                base_name(source)
            );
            let result = comm.upload_dir(Path::new(source), &dest, &opts).await;
            (dest, result)
        } else {
            let dest = target(&self.destination, source, self.many);
            let src = UploadSource::File(PathBuf::from(source));
            let result = comm.upload(src, &dest, &opts).await;
            (dest, result)
        };
        result.map_err(|e| FileError::Upload {
            source_path: source.to_string(),
            destination,
            source: e,
        })
    }

    async fn download(&self, comm: &dyn Communicator, source: &str) -> Result<(), FileError> {
        let (destination, result) = if source.ends_with('/') {
            // `dir/`: its contents go into the local destination directory.
            let dest = PathBuf::from(&self.destination);
            let result = comm.download_dir(source, &dest).await;
            (dest, result)
        } else {
            let dest = PathBuf::from(target(&self.destination, source, self.many));
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| FileError::Local(parent.display().to_string(), e))?;
            }
            let result = comm.download(source, &dest).await;
            (dest, result)
        };
        result.map_err(|e| FileError::Download {
            source_path: source.to_string(),
            destination: destination.display().to_string(),
            source: e,
        })
    }

    async fn copy_all(&self, comm: &dyn Communicator) -> Result<(), FileError> {
        match &self.work {
            Work::Content(content) => comm
                .upload(
                    UploadSource::Bytes(content.clone().into_bytes()),
                    &self.destination,
                    &UploadOptions::default(),
                )
                .await
                .map_err(|e| FileError::Upload {
                    source_path: "content".to_string(),
                    destination: self.destination.clone(),
                    source: e,
                }),
            Work::Upload(sources) => {
                for source in sources {
                    self.upload(comm, source).await?;
                }
                Ok(())
            }
            Work::Download(sources) => {
                for source in sources {
                    self.download(comm, source).await?;
                }
                Ok(())
            }
        }
    }
}

/// Whether `err` says the connection was lost.
fn disconnected(err: &FileError) -> bool {
    matches!(
        err,
        FileError::Upload {
            source: CommError::Disconnected,
            ..
        } | FileError::Download {
            source: CommError::Disconnected,
            ..
        }
    )
}

#[async_trait]
impl Provisioner for File {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        match self.copy_all(ctx.comm).await {
            // The machine may have rebooted since the last provisioner (`expect_disconnect`):
            // log in again once and start over; copies are idempotent.
            Err(err) if disconnected(&err) => {
                ctx.comm.reconnect().await?;
                self.copy_all(ctx.comm).await?;
            }
            other => other?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kiln_core::diag::{FileId, Span};
    use kiln_core::plan::ConfigAttr;
    use serde_json::json;

    use super::*;

    const KIND: FileKind = FileKind;

    fn config(attrs: serde_json::Value) -> Config {
        let serde_json::Value::Object(map) = attrs else {
            panic!("attrs must be an object")
        };
        Config {
            kind: TYPE_NAME.to_string(),
            attrs: map
                .into_iter()
                .map(|(key, value)| ConfigAttr {
                    key,
                    value,
                    span: Span::new(FileId(0), 10, 20),
                })
                .collect(),
            blocks: Vec::new(),
            span: Span::new(FileId(0), 0, 30),
        }
    }

    fn errors(attrs: serde_json::Value) -> String {
        match KIND.configure(&config(attrs)) {
            Ok(_) => panic!("configure accepted an invalid config"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn invalid_configurations_are_explained() {
        let e = errors(json!({ "destination": "/tmp/x" }));
        assert!(
            e.contains("exactly one of `source`, `sources` or `content`"),
            "{e}"
        );
        let e = errors(json!({ "content": "x", "source": "y", "destination": "/tmp/x" }));
        assert!(e.contains("exactly one of"), "{e}");
        let e = errors(json!({ "content": "x", "destination": "/tmp/x", "direction": "sideways" }));
        assert!(
            e.contains("`direction` is `sideways`, expected `upload` or `download`"),
            "{e}"
        );
        let e = errors(json!({ "content": "x", "destination": "/tmp/x", "direction": "download" }));
        assert!(e.contains("`content` can only be uploaded"), "{e}");
        let e = errors(json!({ "content": "x" }));
        assert!(e.contains("`destination` is empty"), "{e}");
        assert!(KIND
            .configure(&config(json!({
                "source": "/nonexistent", "destination": "/tmp/", "generated": true,
            })))
            .is_ok());
        assert!(KIND
            .configure(&config(json!({
                "source": "/nonexistent/", "destination": "here", "direction": "download",
            })))
            .is_ok());
    }

    #[test]
    fn targets_follow_trailing_slashes() {
        assert_eq!(
            target("/etc/app.conf", "conf/a.conf", false),
            "/etc/app.conf"
        );
        assert_eq!(target("/etc/app/", "conf/a.conf", false), "/etc/app/a.conf");
        assert_eq!(target("/etc/app", "conf/a.conf", true), "/etc/app/a.conf");
        assert_eq!(base_name("dir/sub/"), "sub");
    }
}
