//! The docker post-processors, on the Engine API: `docker-tag` (name an image), `docker-push`
//! (push its tags to a registry and record the repository digests), `docker-save` (write it as a
//! tarball) and `docker-import` (make an image from an exported filesystem tarball).
//!
//! They pass image facts along in the artifact's `data`: `ImageId`, `RepoTags` (`repo:tag`
//! names, from `docker-tag` and `docker-import`) and `RepoDigests` (from `docker-push`), which
//! the manifest records.

mod credentials;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as ApiError;
use bollard::query_parameters::{CreateImageOptions, PushImageOptions, TagImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use kiln_core::artifact::{Artifact, ArtifactFile};
use kiln_core::component::{OptionSpec, PostProcessed, PostProcessor, PostProcessorKind, Registry};
use kiln_core::diag::{Diagnostic, Diagnostics};
use kiln_core::event::Level;
use kiln_core::plan::Config;
use kiln_core::runner::BuildCtx;
use kiln_core::BoxError;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub use credentials::FindCredentialsError;
use credentials::{CredentialSources, Found};

/// Adds `docker-tag`, `docker-push`, `docker-save` and `docker-import`.
pub fn register(registry: &mut Registry) {
    registry.add_post_processor(Arc::new(TagKind));
    registry.add_post_processor(Arc::new(PushKind));
    registry.add_post_processor(Arc::new(SaveKind));
    registry.add_post_processor(Arc::new(ImportKind));
}

const fn opt(name: &'static str, ty: &'static str, doc: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        ty,
        required: false,
        doc,
    }
}

const KEEP_INPUT: OptionSpec = opt(
    "keep_input_artifact",
    "bool",
    "Accepted for compatibility; the input image is always kept.",
);

/// Why a docker post-processor failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerPostError {
    #[error("cannot reach the Docker engine (`DOCKER_HOST`, default `/var/run/docker.sock`)")]
    Connect(#[source] ApiError),
    #[error("the input artifact from `{builder}` is not a docker image")]
    NotAnImage { builder: String },
    #[error("the input image has no repository tags: put `docker-tag` (or `docker-import`) before `docker-push`")]
    NothingToPush,
    #[error("the input artifact from `{builder}` has no exported tar file (use `export_path`)")]
    NoTarball { builder: String },
    #[error("cannot tag `{image}` as `{name}`")]
    Tag {
        image: String,
        name: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot push `{name}`")]
    Push {
        name: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot save `{image}` to `{}`", path.display())]
    Save {
        image: String,
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("cannot import `{}` as `{name}`", path.display())]
    Import {
        path: PathBuf,
        name: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot find credentials for `{registry}`")]
    Credentials {
        registry: String,
        #[source]
        source: FindCredentialsError,
    },
    #[error("cancelled while looking up the credentials for `{registry}`")]
    Cancelled { registry: String },
    #[error(
        "the engine imported `{name}` for `{actual}`, not for the platform `{wanted}` (some \
         engines keep only the operating system of an import's platform)"
    )]
    ImportPlatform {
        name: String,
        wanted: String,
        actual: String,
    },
    #[error("cannot inspect image `{image}`")]
    Inspect {
        image: String,
        #[source]
        source: ApiError,
    },
}

async fn connect() -> Result<Docker, DockerPostError> {
    Docker::connect_with_defaults()
        .map_err(DockerPostError::Connect)?
        .negotiate_version()
        .await
        .map_err(DockerPostError::Connect)
}

/// The image id an input artifact stands for.
fn image_of(input: &Artifact) -> Result<String, DockerPostError> {
    match input.data.get("ImageId").and_then(Value::as_str) {
        Some(id) => Ok(id.to_string()),
        None => Err(DockerPostError::NotAnImage {
            builder: input.builder_type.clone(),
        }),
    }
}

fn repo_tags(input: &Artifact) -> Vec<String> {
    input
        .data
        .get("RepoTags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The artifact a post-processor passes on: the input's data with `updates`.
fn image_artifact(
    kind: &str,
    input: &Artifact,
    image: &str,
    updates: Vec<(&str, Value)>,
) -> Artifact {
    let mut data = input.data.clone();
    data.insert("ImageId".into(), image.into());
    for (key, value) in updates {
        data.insert(key.into(), value);
    }
    Artifact {
        builder_type: kind.to_string(),
        id: image.to_string(),
        files: Vec::new(),
        data,
    }
}

/// Splits `repo[:tag]` (a registry port is not a tag).
fn split_name(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

// ---- docker-tag ----

const TAG_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "repository",
        ty: "string",
        required: true,
        doc: "The repository to tag the image in, e.g. `registry.example.com/team/app`.",
    },
    opt("tags", "list(string)", "The tags (default `[\"latest\"]`)."),
    opt(
        "tag",
        "string",
        "One tag (Packer's older spelling); added to `tags`.",
    ),
    opt(
        "force",
        "bool",
        "Accepted for compatibility: the engine always moves an existing tag.",
    ),
    KEEP_INPUT,
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TagOptions {
    repository: String,
    tags: Vec<String>,
    tag: Option<String>,
    #[allow(dead_code, reason = "accepted for Packer compatibility")]
    force: bool,
    #[allow(dead_code, reason = "accepted for Packer compatibility")]
    keep_input_artifact: Option<bool>,
}

struct TagKind;

impl PostProcessorKind for TagKind {
    fn type_name(&self) -> &'static str {
        "docker-tag"
    }

    fn options(&self) -> &'static [OptionSpec] {
        TAG_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        let opts: TagOptions = config.decode()?;
        if opts.repository.is_empty() {
            return Err(Diagnostic::error("`docker-tag` needs a `repository`")
                .at(config.span)
                .into());
        }
        let mut tags = opts.tags;
        tags.extend(opts.tag);
        if tags.is_empty() {
            tags.push("latest".to_string());
        }
        Ok(Box::new(Tag {
            repository: opts.repository,
            tags,
        }))
    }
}

struct Tag {
    repository: String,
    tags: Vec<String>,
}

#[async_trait]
impl PostProcessor for Tag {
    async fn process(&self, ctx: &BuildCtx, input: Artifact) -> Result<PostProcessed, BoxError> {
        let image = image_of(&input)?;
        let docker = connect().await?;
        let mut names = Vec::new();
        for tag in &self.tags {
            let name = format!("{}:{tag}", self.repository);
            let options = TagImageOptions {
                repo: Some(self.repository.clone()),
                tag: Some(tag.clone()),
            };
            docker
                .tag_image(&image, Some(options))
                .await
                .map_err(|source| DockerPostError::Tag {
                    image: image.clone(),
                    name: name.clone(),
                    source,
                })?;
            ctx.events.message(Level::Info, format!("tagged {name}"));
            names.push(Value::from(name));
        }
        let artifact = image_artifact(
            "docker-tag",
            &input,
            &image,
            vec![("RepoTags", names.into())],
        );
        Ok(PostProcessed {
            artifact,
            keep_input: true,
        })
    }
}

// ---- docker-push ----

const PUSH_OPTIONS: &[OptionSpec] = &[
    opt(
        "login",
        "bool",
        "Send the `login_*` credentials with the push.",
    ),
    opt(
        "login_server",
        "string",
        "The registry the credentials are for.",
    ),
    opt(
        "login_username",
        "string",
        "The user name for `login_server`.",
    ),
    opt(
        "login_password",
        "string",
        "The password for `login_server`.",
    ),
    KEEP_INPUT,
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PushOptions {
    login: bool,
    login_server: Option<String>,
    login_username: Option<String>,
    login_password: Option<String>,
    #[allow(dead_code, reason = "accepted for Packer compatibility")]
    keep_input_artifact: Option<bool>,
}

struct PushKind;

impl PostProcessorKind for PushKind {
    fn type_name(&self) -> &'static str {
        "docker-push"
    }

    fn options(&self) -> &'static [OptionSpec] {
        PUSH_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        let opts: PushOptions = config.decode()?;
        let login = if opts.login {
            Some(DockerCredentials {
                username: opts.login_username,
                password: opts.login_password,
                serveraddress: opts.login_server,
                ..DockerCredentials::default()
            })
        } else {
            None
        };
        Ok(Box::new(Push { login }))
    }
}

struct Push {
    login: Option<DockerCredentials>,
}

#[async_trait]
impl PostProcessor for Push {
    async fn process(&self, ctx: &BuildCtx, input: Artifact) -> Result<PostProcessed, BoxError> {
        let image = image_of(&input)?;
        let mut names = repo_tags(&input);
        // Each tag once, whatever the chain before said.
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(DockerPostError::NothingToPush.into());
        }
        let docker = connect().await?;
        let sources = CredentialSources::from_env();
        // Each registry's credentials once: a helper may be slow, or ask the user.
        let mut found: HashMap<String, DockerCredentials> = HashMap::new();
        for name in &names {
            let (repo, tag) = split_name(name);
            let credentials = match (&self.login, &sources) {
                (Some(login), _) => login.clone(),
                (None, None) => DockerCredentials::default(),
                (None, Some(sources)) => {
                    let registry = registry_of(repo);
                    if let Some(credentials) = found.get(registry) {
                        credentials.clone()
                    } else {
                        let credentials = config_credentials(ctx, sources, registry).await?;
                        found.insert(registry.to_string(), credentials.clone());
                        credentials
                    }
                }
            };
            let options = PushImageOptions {
                tag: Some(tag.to_string()),
                platform: None,
            };
            let push_error = |source: BoxError| DockerPostError::Push {
                name: name.clone(),
                source,
            };
            let mut progress = docker.push_image(repo, Some(options), Some(credentials));
            while let Some(item) = progress.next().await {
                let info = item.map_err(|e| push_error(e.into()))?;
                if let Some(detail) = info.error_detail {
                    return Err(push_error(detail.message.unwrap_or_default().into()).into());
                }
            }
            ctx.events.message(Level::Info, format!("pushed {name}"));
        }
        let inspect =
            docker
                .inspect_image(&image)
                .await
                .map_err(|source| DockerPostError::Inspect {
                    image: image.clone(),
                    source,
                })?;
        let pushed_repos: Vec<&str> = names.iter().map(|n| split_name(n).0).collect();
        let digests: Vec<Value> = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .filter(|d| {
                d.split_once('@')
                    .is_some_and(|(repo, _)| pushed_repos.contains(&repo))
            })
            .map(Value::from)
            .collect();
        let artifact = image_artifact(
            "docker-push",
            &input,
            &image,
            vec![("RepoDigests", digests.into())],
        );
        Ok(PostProcessed {
            artifact,
            keep_input: true,
        })
    }
}

/// The credentials the Docker config file gives for `registry` (none: push anonymously). A
/// credential helper it runs is killed when the build is cancelled.
async fn config_credentials(
    ctx: &BuildCtx,
    sources: &CredentialSources,
    registry: &str,
) -> Result<DockerCredentials, DockerPostError> {
    // On cancellation the lookup is dropped, which kills the helper it runs.
    let found = tokio::select! {
        biased;
        _ = ctx.cancel.cancel.cancelled() => {
            return Err(DockerPostError::Cancelled {
                registry: registry.to_string(),
            })
        }
        found = sources.lookup(registry) => found,
    };
    let credentials_error = |source| DockerPostError::Credentials {
        registry: registry.to_string(),
        source,
    };
    match found.map_err(credentials_error)? {
        Some(Found {
            credentials,
            source,
        }) => {
            ctx.events.message(
                Level::Debug,
                format!("credentials for {registry} from {source}"),
            );
            Ok(credentials)
        }
        None => {
            ctx.events.message(
                Level::Debug,
                format!("no credentials for {registry}; pushing anonymously"),
            );
            Ok(DockerCredentials::default())
        }
    }
}

/// The registry host of a repository name (`docker.io` when it names none).
fn registry_of(repo: &str) -> &str {
    match repo.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

// ---- docker-save ----

const SAVE_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "path",
        ty: "string",
        required: true,
        doc: "Where to write the image tarball (`docker load` reads it).",
    },
    KEEP_INPUT,
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SaveOptions {
    path: Option<PathBuf>,
    #[allow(dead_code, reason = "accepted for Packer compatibility")]
    keep_input_artifact: Option<bool>,
}

struct SaveKind;

impl PostProcessorKind for SaveKind {
    fn type_name(&self) -> &'static str {
        "docker-save"
    }

    fn options(&self) -> &'static [OptionSpec] {
        SAVE_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        let opts: SaveOptions = config.decode()?;
        let Some(path) = opts.path else {
            return Err(Diagnostic::error("`docker-save` needs a `path`")
                .at(config.span)
                .into());
        };
        Ok(Box::new(Save { path }))
    }
}

struct Save {
    path: PathBuf,
}

#[async_trait]
impl PostProcessor for Save {
    async fn process(&self, ctx: &BuildCtx, input: Artifact) -> Result<PostProcessed, BoxError> {
        let image = image_of(&input)?;
        // Saved by name when it has one, so that `docker load` restores the tag too.
        let name = repo_tags(&input)
            .into_iter()
            .next()
            .unwrap_or(image.clone());
        let docker = connect().await?;
        let file =
            save(&docker, &name, &self.path)
                .await
                .map_err(|source| DockerPostError::Save {
                    image: name.clone(),
                    path: self.path.clone(),
                    source,
                })?;
        ctx.events.message(
            Level::Info,
            format!("saved {name} to {}", self.path.display()),
        );
        let mut artifact = image_artifact("docker-save", &input, &image, Vec::new());
        artifact.files = vec![file];
        Ok(PostProcessed {
            artifact,
            keep_input: true,
        })
    }
}

/// Streams `docker save NAME` to `path` through a temp file beside it, hashing it.
async fn save(docker: &Docker, name: &str, path: &Path) -> Result<ArtifactFile, BoxError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&dir).await?;
    let (std_file, temp_path) = tempfile::Builder::new()
        .prefix(".kiln-save-")
        .tempfile_in(&dir)?
        .into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut stream = docker.export_image(name);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hash.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    temp_path.persist(path)?;
    Ok(ArtifactFile {
        path: path.to_owned(),
        size,
        sha256: hex::encode(hash.finalize()),
    })
}

// ---- docker-import ----

const IMPORT_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "repository",
        ty: "string",
        required: true,
        doc: "The repository of the imported image.",
    },
    opt(
        "tag",
        "string",
        "The tag of the imported image (default `latest`).",
    ),
    opt(
        "changes",
        "list(string)",
        "Dockerfile instructions applied to the imported image (CMD, ENV, ...).",
    ),
    opt(
        "platform",
        "string",
        "The platform of the imported image, e.g. `linux/amd64`.",
    ),
    KEEP_INPUT,
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImportOptions {
    repository: String,
    tag: Option<String>,
    changes: Vec<String>,
    platform: String,
    #[allow(dead_code, reason = "accepted for Packer compatibility")]
    keep_input_artifact: Option<bool>,
}

struct ImportKind;

impl PostProcessorKind for ImportKind {
    fn type_name(&self) -> &'static str {
        "docker-import"
    }

    fn options(&self) -> &'static [OptionSpec] {
        IMPORT_OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        let opts: ImportOptions = config.decode()?;
        if opts.repository.is_empty() {
            return Err(Diagnostic::error("`docker-import` needs a `repository`")
                .at(config.span)
                .into());
        }
        Ok(Box::new(Import {
            repository: opts.repository,
            tag: opts.tag.unwrap_or_else(|| "latest".to_string()),
            changes: opts.changes,
            platform: opts.platform,
        }))
    }
}

struct Import {
    repository: String,
    tag: String,
    changes: Vec<String>,
    platform: String,
}

#[async_trait]
impl PostProcessor for Import {
    async fn process(&self, ctx: &BuildCtx, input: Artifact) -> Result<PostProcessed, BoxError> {
        let Some(tarball) = input.files.first().map(|f| f.path.clone()) else {
            return Err(DockerPostError::NoTarball {
                builder: input.builder_type.clone(),
            }
            .into());
        };
        let name = format!("{}:{}", self.repository, self.tag);
        let docker = connect().await?;
        let import_error = |source: BoxError| DockerPostError::Import {
            path: tarball.clone(),
            name: name.clone(),
            source,
        };
        let file = tokio::fs::File::open(&tarball)
            .await
            .map_err(|e| import_error(e.into()))?;
        let options = CreateImageOptions {
            from_image: None,
            from_src: Some("-".to_string()),
            repo: Some(self.repository.clone()),
            tag: Some(self.tag.clone()),
            message: None,
            changes: self.changes.clone(),
            platform: self.platform.clone(),
        };
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let mut progress = docker.create_image(Some(options), Some(body), None);
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| import_error(e.into()))?;
            if let Some(detail) = info.error_detail {
                return Err(import_error(detail.message.unwrap_or_default().into()).into());
            }
        }
        let inspect =
            docker
                .inspect_image(&name)
                .await
                .map_err(|source| DockerPostError::Inspect {
                    image: name.clone(),
                    source,
                })?;
        let image = inspect.id.clone().unwrap_or_default();
        // An engine that ignores part of `platform` would otherwise leave an image of another
        // platform than the template says, silently.
        if let Some(actual) = docker::platform_mismatch(&self.platform, &inspect) {
            let options = bollard::query_parameters::RemoveImageOptions {
                force: true,
                noprune: false,
                platforms: None,
            };
            docker.remove_image(&name, Some(options), None).await.ok();
            return Err(DockerPostError::ImportPlatform {
                name,
                wanted: self.platform.clone(),
                actual,
            }
            .into());
        }
        ctx.events
            .message(Level::Info, format!("imported {name} as {image}"));
        let mut artifact = image_artifact(
            "docker-import",
            &input,
            &image,
            vec![("RepoTags", vec![Value::from(name)].into())],
        );
        artifact.data.remove("RepoDigests");
        Ok(PostProcessed {
            artifact,
            keep_input: true,
        })
    }
}

#[cfg(test)]
mod tests;
