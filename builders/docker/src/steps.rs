//! The docker builder's steps over its typed state: prepare image → start container → provision
//! → commit | export | discard.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bollard::errors::Error as ApiError;
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig, ImageInspect};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use kiln_comm::docker::DockerCommunicator;
use kiln_core::artifact::{Artifact, ArtifactFile};
use kiln_core::component::{ConnInfo, ProvisionHook};
use kiln_core::event::Level;
use kiln_core::runner::{run_steps, BuildCtx, BuildError, CleanupCtx, Leftover, Step};
use kiln_core::BoxError;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Output, Settings, TYPE_NAME};

/// What the steps share.
#[derive(Default)]
struct State {
    docker: Option<Docker>,
    base: Option<ImageInspect>,
    /// The build container: its name before it is created, then its id.
    container: Option<String>,
    /// The committed image's id.
    image_id: Option<String>,
    export: Option<ArtifactFile>,
}

impl State {
    fn docker(&self) -> &Docker {
        self.docker.as_ref().expect("prepare image runs first")
    }

    fn container(&self) -> &str {
        self.container
            .as_deref()
            .expect("start container runs first")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareImageError {
    #[error("cannot reach the Docker engine (`DOCKER_HOST`, default `/var/run/docker.sock`)")]
    Connect(#[source] ApiError),
    #[error("image `{image}` is not present locally and `pull` is false")]
    NotPresent { image: String },
    #[error("cannot pull image `{image}`")]
    Pull {
        image: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot inspect image `{image}`")]
    Inspect {
        image: String,
        #[source]
        source: ApiError,
    },
    #[error(
        "image `{image}` is present locally for `{actual}`, not for the platform `{wanted}`, \
         and `pull` is false"
    )]
    PlatformNotPresent {
        image: String,
        wanted: String,
        actual: String,
    },
    #[error("the image pulled as `{image}` is for `{actual}`, not for the platform `{wanted}`")]
    PlatformPulled {
        image: String,
        wanted: String,
        actual: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartContainerError {
    #[error("cannot create the build container from `{image}`")]
    Create {
        image: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot start container `{id}`")]
    Start {
        id: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot remove container `{id}`")]
    Remove {
        id: String,
        #[source]
        source: ApiError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("cannot commit container `{id}`")]
    Commit {
        id: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot export container `{id}` to `{}`", path.display())]
    Export {
        id: String,
        path: PathBuf,
        #[source]
        source: BoxError,
    },
}

/// Connects to the engine and makes sure the base image is present.
struct PrepareImage<'a>(&'a Settings);

#[async_trait]
impl Step<State> for PrepareImage<'_> {
    fn name(&self) -> &str {
        "prepare image"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let s = self.0;
        let docker = Docker::connect_with_defaults()
            .map_err(PrepareImageError::Connect)?
            .negotiate_version()
            .await
            .map_err(PrepareImageError::Connect)?;
        state.docker = Some(docker.clone());
        let inspect = |source| PrepareImageError::Inspect {
            image: s.image.clone(),
            source,
        };
        let mut pulled = false;
        let mut base = match docker.inspect_image(&s.image).await {
            Ok(image) => image,
            Err(err) if !is_not_found(&err) => return Err(inspect(err).into()),
            Err(_) if !s.pull => {
                return Err(PrepareImageError::NotPresent {
                    image: s.image.clone(),
                }
                .into())
            }
            Err(_) => {
                pull(&docker, s, ctx).await?;
                pulled = true;
                docker.inspect_image(&s.image).await.map_err(inspect)?
            }
        };
        // A local image of another platform: the engine would refuse the container with a
        // message naming the image id. Pull the platform asked for (as `docker run --platform`
        // does), or say why not.
        if let Some(actual) = platform_mismatch(&s.platform, &base) {
            let (image, wanted) = (s.image.clone(), s.platform.clone());
            if !s.pull {
                let err = PrepareImageError::PlatformNotPresent {
                    image,
                    wanted,
                    actual,
                };
                return Err(err.into());
            }
            if !pulled {
                pull(&docker, s, ctx).await?;
                base = docker.inspect_image(&s.image).await.map_err(inspect)?;
            }
            if let Some(actual) = platform_mismatch(&s.platform, &base) {
                let err = PrepareImageError::PlatformPulled {
                    image,
                    wanted,
                    actual,
                };
                return Err(err.into());
            }
        }
        state.base = Some(base);
        Ok(())
    }
}

/// The platform of `image` (`os/arch[/variant]`) when it is not the `wanted` one (`os[/arch
/// [/variant]]`; empty: any). A part the engine does not report, or `wanted` leaves out, is not
/// compared.
pub fn platform_mismatch(wanted: &str, image: &ImageInspect) -> Option<String> {
    let have = [&image.os, &image.architecture, &image.variant]
        .map(|part| platform_part(part.as_deref().unwrap_or_default()));
    let differs = wanted
        .split('/')
        .map(platform_part)
        .zip(&have)
        .any(|(want, have)| !want.is_empty() && !have.is_empty() && want != *have);
    differs.then(|| {
        let parts: Vec<&str> = have
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        parts.join("/")
    })
}

/// A platform part as the engine spells it (`uname -m` names some architectures otherwise).
fn platform_part(part: &str) -> String {
    let part = part.to_ascii_lowercase();
    match part.as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        _ => part,
    }
}

async fn pull(docker: &Docker, s: &Settings, ctx: &BuildCtx) -> Result<(), PrepareImageError> {
    let options = CreateImageOptions {
        from_image: Some(s.image.clone()),
        from_src: None,
        repo: None,
        tag: None,
        message: None,
        changes: Vec::new(),
        platform: s.platform.clone(),
    };
    let mut progress = docker.create_image(Some(options), None, s.credentials.clone());
    while let Some(item) = progress.next().await {
        let info = item.map_err(|source| PrepareImageError::Pull {
            image: s.image.clone(),
            source,
        })?;
        if let (Some(status), None) = (info.status, info.progress_detail) {
            ctx.events
                .message(Level::Info, format!("pull {}: {status}", s.image));
        }
    }
    Ok(())
}

fn is_not_found(err: &ApiError) -> bool {
    matches!(
        err,
        ApiError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Creates and starts the build container; its cleanup removes it with force.
struct StartContainer<'a>(&'a Settings);

#[async_trait]
impl Step<State> for StartContainer<'_> {
    fn name(&self) -> &str {
        "start container"
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let s = self.0;
        let base = state.base.as_ref().expect("prepare image runs first");
        let image = base.id.clone().unwrap_or_else(|| s.image.clone());
        // Named after the run, and recorded before it exists: a cancellation during the
        // create call still leaves a name for the cleanup to remove.
        let name = container_name(ctx);
        state.container = Some(name.clone());
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(s.run_command.clone()),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                privileged: Some(s.privileged),
                cap_add: (!s.cap_add.is_empty()).then(|| s.cap_add.clone()),
                cap_drop: (!s.cap_drop.is_empty()).then(|| s.cap_drop.clone()),
                binds: (!s.binds.is_empty()).then(|| s.binds.clone()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptions {
            name: Some(name),
            platform: s.platform.clone(),
        };
        let created = state
            .docker()
            .create_container(Some(options), body)
            .await
            .map_err(|source| StartContainerError::Create { image, source })?;
        state.container = Some(created.id.clone());
        state
            .docker()
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|source| StartContainerError::Start {
                id: created.id.clone(),
                source,
            })?;
        ctx.events
            .message(Level::Info, format!("container {}", short(&created.id)));
        Ok(())
    }

    async fn cleanup(&self, state: &mut State, _: &CleanupCtx<'_>) -> Result<(), BoxError> {
        let Some(id) = state.container.clone() else {
            return Ok(());
        };
        let options = RemoveContainerOptions {
            v: true,
            force: true,
            link: false,
        };
        match state.docker().remove_container(&id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(source) => Err(StartContainerError::Remove { id, source }.into()),
        }
    }

    fn leftovers(&self, state: &State) -> Vec<Leftover> {
        state
            .container
            .iter()
            .map(|id| Leftover {
                what: format!("docker container {id}"),
                how_to_reach: Some(format!("docker exec -it {id} /bin/sh")),
            })
            .collect()
    }
}

/// `kiln-RUN-SOURCE`: unique per run and build, readable in `docker ps`.
fn container_name(ctx: &BuildCtx) -> String {
    let source: String = ctx
        .source_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let run = ctx.run_id.simple().to_string();
    format!("kiln-{}-{source}", &run[..12])
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// Runs the provisioners through the docker communicator.
struct Provision<'a> {
    settings: &'a Settings,
    hook: &'a dyn ProvisionHook,
}

#[async_trait]
impl Step<State> for Provision<'_> {
    fn name(&self) -> &str {
        "provision"
    }

    /// The hook returns soon after a cancellation, once the provisioner has stopped its work.
    fn stops_on_cancel(&self) -> bool {
        true
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let s = self.settings;
        let id = state.container().to_string();
        // Uploads go to the user commands run as, as Packer's `fix_upload_owner` does.
        let image_user = state
            .base
            .as_ref()
            .and_then(|b| b.config.as_ref())
            .and_then(|c| c.user.clone());
        let upload_owner = s
            .fix_upload_owner
            .then(|| s.exec_user.clone().or(image_user))
            .flatten();
        let comm = DockerCommunicator::new(state.docker().clone(), id.clone())
            .with_user(s.exec_user.clone())
            .with_upload_owner(upload_owner);
        let conn = ConnInfo {
            id: Some(id),
            conn_type: "docker".to_string(),
            user: self.settings.exec_user.clone(),
            ..ConnInfo::default()
        };
        self.hook.provision(ctx, &conn, &comm).await?;
        Ok(())
    }
}

/// Commits, exports or discards the container.
struct Finish<'a>(&'a Settings);

#[async_trait]
impl Step<State> for Finish<'_> {
    fn name(&self) -> &str {
        match self.0.output {
            Output::Commit => "commit",
            Output::Export(_) => "export",
            Output::Discard => "discard",
        }
    }

    async fn run(&self, state: &mut State, ctx: &BuildCtx) -> Result<(), BoxError> {
        let s = self.0;
        let id = state.container().to_string();
        match &s.output {
            Output::Commit => {
                let base = state.base.as_ref().expect("prepare image runs first");
                let image_id = match s.source_date_epoch {
                    Some(epoch) => {
                        let build = &ctx.build_name;
                        crate::reproducible::commit(state.docker(), &id, base, s, epoch, build)
                            .await?
                    }
                    None => commit(state.docker(), &id, base, s).await?,
                };
                ctx.events
                    .message(Level::Info, format!("committed image {}", short(&image_id)));
                state.image_id = Some(image_id);
            }
            Output::Export(path) => {
                let file = export(state.docker(), &id, path).await.map_err(|source| {
                    CommitError::Export {
                        id: id.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
                state.export = Some(file);
            }
            Output::Discard => {}
        }
        Ok(())
    }
}

/// The config the committed image gets before `changes`: the base image's, so that its
/// ENTRYPOINT, CMD, ENV, WORKDIR, USER and the rest survive the build container's keep-alive
/// command, and none of the build's TTY/stdin flags or hostname end up in the image.
pub(crate) fn image_config(base: &ImageInspect) -> ContainerConfig {
    let c = base.config.clone().unwrap_or_default();
    ContainerConfig {
        user: c.user,
        exposed_ports: c.exposed_ports,
        env: c.env,
        cmd: c.cmd,
        healthcheck: c.healthcheck,
        args_escaped: c.args_escaped,
        volumes: c.volumes,
        working_dir: c.working_dir,
        // An empty (not absent) entrypoint keeps the engine from taking the container's.
        entrypoint: Some(c.entrypoint.unwrap_or_default()),
        on_build: c.on_build,
        labels: c.labels,
        stop_signal: c.stop_signal,
        shell: c.shell,
        tty: Some(false),
        open_stdin: Some(false),
        stdin_once: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        ..ContainerConfig::default()
    }
}

pub(crate) async fn commit(
    docker: &Docker,
    id: &str,
    base: &ImageInspect,
    s: &Settings,
) -> Result<String, CommitError> {
    let options = CommitContainerOptions {
        container: Some(id.to_string()),
        repo: None,
        tag: None,
        comment: s.message.clone(),
        author: s.author.clone(),
        pause: true,
        changes: (!s.changes.is_empty()).then(|| s.changes.join("\n")),
    };
    let committed = docker
        .commit_container(options, image_config(base))
        .await
        .map_err(|source| CommitError::Commit {
            id: id.to_string(),
            source,
        })?;
    Ok(committed.id)
}

/// Streams the container's filesystem to `path` through a temp file beside it, hashing it.
async fn export(docker: &Docker, id: &str, path: &Path) -> Result<ArtifactFile, BoxError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&dir).await?;
    let temp = tempfile::Builder::new()
        .prefix(".kiln-export-")
        .tempfile_in(&dir)?;
    let (std_file, temp_path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut stream = docker.export_container(id);
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

/// Runs the steps and describes what they produced.
pub(crate) async fn run(
    s: &Settings,
    ctx: &BuildCtx,
    hook: &dyn ProvisionHook,
) -> Result<Artifact, BuildError> {
    let mut state = State::default();
    let steps: [&dyn Step<State>; 4] = [
        &PrepareImage(s),
        &StartContainer(s),
        &Provision { settings: s, hook },
        &Finish(s),
    ];
    run_steps(&steps, &mut state, ctx).await?;
    let base_id = state.base.and_then(|b| b.id).unwrap_or_default();
    let mut data = serde_json::Map::new();
    data.insert("BaseImage".into(), s.image.clone().into());
    data.insert("BaseImageId".into(), base_id.clone().into());
    let (id, files) = match (state.image_id, state.export) {
        (Some(image), _) => {
            data.insert("ImageId".into(), image.clone().into());
            (image, Vec::new())
        }
        (None, Some(file)) => (file.path.display().to_string(), vec![file]),
        (None, None) => (base_id, Vec::new()),
    };
    Ok(Artifact {
        builder_type: TYPE_NAME.to_string(),
        id,
        files,
        data,
    })
}
