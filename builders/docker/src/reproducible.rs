//! Reproducible image output: Kiln writes the new layer and the image config itself, then loads
//! the image into the engine (`POST /images/load`), instead of `docker commit`.
//!
//! - The layer holds the container's filesystem changes (`GET /containers/{id}/changes`), read
//!   from the container's export: entries sorted by path, modification times clamped to
//!   `SOURCE_DATE_EPOCH`, numeric owners only (no user or group names), plain GNU headers (no
//!   access or change times), and a whiteout (`.wh.NAME`) for each deleted path.
//! - Extended attributes: the export carries them as PAX records `SCHILY.xattr.NAME`; each
//!   changed entry keeps those records (and no other PAX record), in a PAX header of its own
//!   written just before it, keys sorted, the header itself with no name or owner and time 0. The
//!   engine's export holds `security.capability` only (file capabilities, as `setcap` writes
//!   them), so that is what reaches the layer; `docker commit` keeps no more either.
//! - Hard links: the export writes the first name of a multiply linked file in full and later
//!   names as links to it (in its own walk order, which is not the sorted order: `opt-z` sorts
//!   before `opt/a`). Kiln regroups them: of each group of changed names that share a file, the
//!   one that sorts first holds the content and the others are `Link` entries to it, so every
//!   link's target comes earlier in the layer. When the file the export links to is not among
//!   the changes (a new name for a base-layer file, e.g. `ln /bin/busybox /opt/bb`), the new
//!   names get the file's content as a regular file (read through `GET
//!   /containers/{id}/archive`), linked among themselves: a layer's link can only point into
//!   the layer (the engine extracts each layer on its own). This is what the engine's generic
//!   diff of a change list (`archive.ExportChanges`, for storage drivers without a native diff)
//!   writes. overlay2's native diff, which tars the upper directory, would also carry the
//!   base file (overlayfs copies it up to link it) and keep the two names one file; Kiln keeps
//!   to the change list, which does not name the copied-up file, so the layer shadows no
//!   unchanged base file or directory. The base-layer name and the new one are then two files
//!   with the same content.
//! - A container that changed nothing gets no layer: the image has the base's layers and an
//!   `empty_layer` history entry, as `docker commit` does for an empty diff.
//! - The config is the one the engine would commit (base config, keep-alive removed, `changes`
//!   applied: made by a throwaway `commit` so that Kiln does not re-implement Dockerfile
//!   parsing), with `created` set to `SOURCE_DATE_EPOCH`, no container id or hostname, and its
//!   JSON keys sorted.
//! - Its `history` is the base image's, then Kiln's entry: `created` = `SOURCE_DATE_EPOCH`,
//!   `created_by` = `kiln build BUILD` (the build's name, e.g. `hello.docker.app`; no run or
//!   container id, no time), `comment` = `message` and
//!   `author` = `author` when set. The base entries come from `GET /images/{id}/history`
//!   (`created` to the second; no `author`, which that endpoint does not give), with
//!   `empty_layer` set where the layer sizes tell: entries of size 0 are empty when the sized
//!   ones are as many as the base's layers, none is when there are as many entries as layers.
//!   When the sizes leave it open (a layer of size 0, such as one that only deletes, beside
//!   metadata-only entries), the entries are the base config's own, read from `docker save` of
//!   the base. A base without a consistent history gets an empty entry (`{}`) per layer. So the
//!   entries with a layer are always exactly as many as the config's `diff_ids`.
//! - The image id is the sha256 of that config, so two builds that make the same changes on the
//!   same base give the same id.
//!
//! Not carried: extended attributes the engine's export leaves out (all but
//! `security.capability`: `user.*`, `trusted.*`, ACLs, SELinux labels), and hard links between
//! a changed name and an unchanged one (see above).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use bollard::models::{ChangeType, ImageHistoryResponseItem, ImageInspect};
use bollard::query_parameters::{
    DownloadFromContainerOptions, ImportImageOptions, RemoveImageOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt, TryStreamExt};
use kiln_core::BoxError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::bytes::Bytes;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::Settings;

/// Why writing a reproducible image failed.
#[derive(Debug, thiserror::Error)]
pub enum ReproducibleError {
    #[error("cannot list the changes of container `{id}`")]
    Changes {
        id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot read the filesystem of container `{id}`")]
    Export {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the history of the base image `{image}`")]
    History {
        image: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot load the image into the engine")]
    Load(#[source] BoxError),
    #[error("cannot write the OCI image layout `{}`", path.display())]
    OciLayout {
        path: std::path::PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("the engine loaded the image as `{got}`, not `{expected}`")]
    Mismatch { expected: String, got: String },
}

/// The PAX record prefix of an extended attribute.
const XATTR: &str = "SCHILY.xattr.";

/// One entry of the new layer.
struct Entry {
    header: tar::Header,
    /// A symbolic link's target, or a hard link's (a path of the export, then of this layer).
    link: Option<std::path::PathBuf>,
    /// Its `SCHILY.xattr.*` PAX records, by key.
    xattrs: BTreeMap<String, Vec<u8>>,
    data: Vec<u8>,
}

impl Entry {
    fn hard_link_target(&self) -> Option<String> {
        self.link
            .as_ref()
            .filter(|_| self.header.entry_type() == tar::EntryType::Link)
            .map(|l| l.to_string_lossy().trim_end_matches('/').to_string())
    }
}

/// Writes the container's changes as a deterministic image and loads it; returns its id.
pub(crate) async fn commit(
    docker: &Docker,
    id: &str,
    base: &ImageInspect,
    s: &Settings,
    epoch: i64,
    build_name: &str,
) -> Result<String, BoxError> {
    let changes = docker
        .container_changes(id)
        .await
        .map_err(|source| ReproducibleError::Changes {
            id: id.to_string(),
            source,
        })?
        .unwrap_or_default();
    let mut kept = BTreeSet::new();
    let mut deleted = Vec::new();
    for change in changes {
        let path = change.path.trim_start_matches('/').to_string();
        match change.kind {
            ChangeType::_2 => deleted.push(path),
            _ => {
                kept.insert(path);
            }
        }
    }

    let layer = layer(docker, id, kept, deleted, epoch as u64).await?;
    let diff_id = layer
        .as_ref()
        .map(|l| format!("sha256:{}", hex::encode(Sha256::digest(l))));
    let history = history(docker, base, s, epoch, build_name, layer.is_none()).await?;
    let config = config_bytes(docker, id, base, s, epoch, diff_id, history).await?;
    let image_id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    if let Some(dir) = &s.oci_layout {
        let base_id = base.id.clone().unwrap_or_default();
        let base_layers = diff_ids_of(base);
        oci::write(
            docker,
            &base_id,
            &base_layers,
            &config,
            layer.as_deref(),
            dir,
        )
        .await
        .map_err(|source| ReproducibleError::OciLayout {
            path: dir.clone(),
            source,
        })?;
    }
    load(docker, base, &config, &image_id, layer).await?;
    Ok(image_id)
}

fn diff_ids_of(base: &ImageInspect) -> Vec<String> {
    base.root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default()
}

/// Hands the body `stream` to `read` as a blocking reader, on a blocking thread.
async fn read_blocking<T: Send + 'static>(
    stream: impl Stream<Item = Result<Bytes, bollard::errors::Error>> + Send + 'static,
    read: impl FnOnce(&mut dyn Read) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let reader = StreamReader::new(stream.map_err(std::io::Error::other));
    tokio::task::spawn_blocking(move || read(&mut SyncIoBridge::new(Box::pin(reader))))
        .await
        .expect("the reader does not panic")
}

/// The layer tar: the changed entries of the container's export, normalised, plus whiteouts;
/// `None` when the container changed nothing.
async fn layer(
    docker: &Docker,
    id: &str,
    kept: BTreeSet<String>,
    deleted: Vec<String>,
    epoch: u64,
) -> Result<Option<Vec<u8>>, ReproducibleError> {
    let export_error = |source| ReproducibleError::Export {
        id: id.to_string(),
        source,
    };
    let mut entries = read_blocking(docker.export_container(id), move |export| {
        collect(export, &kept, epoch)
    })
    .await
    .map_err(export_error)?;
    let mut outside = BTreeMap::new();
    for target in outside_targets(&entries) {
        let content = file_content(docker, id, &target)
            .await
            .map_err(export_error)?;
        outside.insert(target, content);
    }
    link_hard_links(&mut entries, outside);
    for path in deleted {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name.to_string()),
            None => (String::new(), path.clone()),
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(epoch);
        header.set_size(0);
        entries.insert(
            format!("{dir}.wh.{name}"),
            Entry {
                header,
                link: None,
                xattrs: BTreeMap::new(),
                data: Vec::new(),
            },
        );
    }
    if entries.is_empty() {
        return Ok(None);
    }
    write_layer(entries).map(Some).map_err(export_error)
}

/// Reads the export and keeps the entries named in `kept`, with normalised headers.
fn collect(
    export: &mut dyn Read,
    kept: &BTreeSet<String>,
    epoch: u64,
) -> std::io::Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(export);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        if !kept.contains(&path) {
            continue;
        }
        let mut xattrs = BTreeMap::new();
        for record in entry.pax_extensions()?.into_iter().flatten() {
            let record = record?;
            // A key that is not UTF-8 cannot be written back by the `tar` crate; the engine
            // writes none.
            if let Ok(key) = record.key() {
                if key.starts_with(XATTR) {
                    xattrs.insert(key.to_string(), record.value_bytes().to_vec());
                }
            }
        }
        let src = entry.header();
        let kind = src.entry_type();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(src.mode()?);
        header.set_uid(src.uid()?);
        header.set_gid(src.gid()?);
        header.set_mtime(src.mtime()?.min(epoch));
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(src.device_major()?.unwrap_or(0))?;
            header.set_device_minor(src.device_minor()?.unwrap_or(0))?;
        }
        let link = entry.link_name()?.map(|l| l.into_owned());
        let mut data = Vec::new();
        if kind.is_file() {
            entry.read_to_end(&mut data)?;
        }
        header.set_size(data.len() as u64);
        let entry = Entry {
            header,
            link,
            xattrs,
            data,
        };
        out.insert(path, entry);
    }
    Ok(out)
}

/// The files that changed entries are hard links to but that are not among the changes.
fn outside_targets(entries: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    entries
        .values()
        .filter_map(Entry::hard_link_target)
        .filter(|target| !entries.contains_key(target))
        .collect()
}

/// The content of the regular file `path` of container `id`.
async fn file_content(docker: &Docker, id: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let options = DownloadFromContainerOptions {
        path: format!("/{path}"),
    };
    read_blocking(docker.download_from_container(id, Some(options)), |tar| {
        let mut archive = tar::Archive::new(tar);
        let mut entry = archive
            .entries()?
            .next()
            .ok_or_else(|| std::io::Error::other("the archive of a file is empty"))??;
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        Ok(data)
    })
    .await
}

/// Regroups hard links so that each group's first path (in layer order) holds the content and
/// the others link to it. `outside` has the content of the files the export links to that are
/// not in `entries` (see `outside_targets`), by their path.
fn link_hard_links(entries: &mut BTreeMap<String, Entry>, mut outside: BTreeMap<String, Vec<u8>>) {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, entry) in entries.iter() {
        if let Some(target) = entry.hard_link_target() {
            groups.entry(target).or_default().push(path.clone());
        }
    }
    for (target, mut names) in groups {
        let (data, xattrs) = match entries.get_mut(&target) {
            Some(file) => {
                names.push(target.clone());
                (
                    std::mem::take(&mut file.data),
                    std::mem::take(&mut file.xattrs),
                )
            }
            // The links carry the file's attributes (same inode).
            None => (
                outside.remove(&target).unwrap_or_default(),
                entries[&names[0]].xattrs.clone(),
            ),
        };
        names.sort();
        let (first, others) = names.split_first().expect("a group has a name");
        let file = entries.get_mut(first).expect("a name of the layer");
        file.header.set_entry_type(tar::EntryType::Regular);
        file.header.set_size(data.len() as u64);
        file.link = None;
        file.data = data;
        file.xattrs = xattrs;
        for name in others {
            let link = entries.get_mut(name).expect("a name of the layer");
            link.header.set_entry_type(tar::EntryType::Link);
            link.header.set_size(0);
            link.link = Some(first.into());
            link.data = Vec::new();
            link.xattrs = BTreeMap::new();
        }
    }
}

fn write_layer(entries: BTreeMap<String, Entry>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mut entry) in entries {
        // Nothing when there are no attributes; keys in sorted order (a BTreeMap).
        tar.append_pax_extensions(entry.xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        match &entry.link {
            Some(link) => tar.append_link(&mut entry.header, &path, link)?,
            None => tar.append_data(&mut entry.header, &path, entry.data.as_slice())?,
        }
    }
    tar.into_inner()
}

/// `seconds` since the epoch as RFC 3339, to the second.
fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image config, canonical JSON: the engine's own commit config, made reproducible.
async fn config_bytes(
    docker: &Docker,
    id: &str,
    base: &ImageInspect,
    s: &Settings,
    epoch: i64,
    diff_id: Option<String>,
    history: Vec<Value>,
) -> Result<Vec<u8>, BoxError> {
    // A throwaway commit applies `changes` exactly as `docker commit` would.
    let scratch = crate::steps::commit(docker, id, base, s).await?;
    let committed = docker.inspect_image(&scratch).await;
    docker
        .remove_image(&scratch, None::<RemoveImageOptions>, None)
        .await?;
    let committed = committed?;
    let mut diff_ids: Vec<Value> = diff_ids_of(base).into_iter().map(Value::from).collect();
    diff_ids.extend(diff_id.map(Value::from));
    let mut config = json!({
        "architecture": committed.architecture,
        "os": committed.os,
        "config": serde_json::to_value(committed.config.unwrap_or_default())?,
        "created": rfc3339(epoch),
        "history": history,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    if let Some(author) = &s.author {
        config["author"] = author.clone().into();
    }
    if let Some(variant) = committed.variant {
        config["variant"] = variant.into();
    }
    Ok(serde_json::to_vec(&sorted(config))?)
}

/// The image's history: the base image's entries, oldest first, then Kiln's.
async fn history(
    docker: &Docker,
    base: &ImageInspect,
    s: &Settings,
    epoch: i64,
    build_name: &str,
    empty_layer: bool,
) -> Result<Vec<Value>, BoxError> {
    let image = base.id.clone().unwrap_or_default();
    let mut entries = base_history(docker, &image, diff_ids_of(base).len())
        .await
        .map_err(|source| ReproducibleError::History { image, source })?;
    let mut own =
        json!({ "created": rfc3339(epoch), "created_by": format!("kiln build {build_name}") });
    if let Some(message) = &s.message {
        own["comment"] = message.clone().into();
    }
    if let Some(author) = &s.author {
        own["author"] = author.clone().into();
    }
    if empty_layer {
        own["empty_layer"] = true.into();
    }
    entries.push(own);
    Ok(entries)
}

/// The history entries of the base image `image` (which has `layers` layers), oldest first.
async fn base_history(docker: &Docker, image: &str, layers: usize) -> Result<Vec<Value>, BoxError> {
    let items = docker.image_history(image).await?;
    if let Some(entries) = endpoint_history(items, layers) {
        return Ok(entries);
    }
    let hex = image.trim_start_matches("sha256:").to_string();
    let names = [format!("{hex}.json"), format!("blobs/sha256/{hex}")];
    let configs = read_saved(docker, image, move |name, entry| {
        if !names.iter().any(|n| n == name) {
            return Ok(None);
        }
        let config: Value = serde_json::from_reader(entry)?;
        Ok(Some(config))
    })
    .await?;
    let config = configs
        .into_iter()
        .next()
        .ok_or("`docker save` of the base image holds no config")?;
    Ok(config_history(&config["history"], layers))
}

/// Go's zero time (year 1) in seconds since 1970: the history endpoint's "no time".
const NO_TIME: i64 = -62_135_596_800;

/// The base entries as the history endpoint (newest first) gives them, oldest first; `None`
/// when its layer sizes leave open which entries have a layer.
fn endpoint_history(items: Vec<ImageHistoryResponseItem>, layers: usize) -> Option<Vec<Value>> {
    if items.is_empty() {
        return Some(placeholders(layers));
    }
    let sized = items.iter().filter(|i| i.size > 0).count();
    let all_layers = items.len() == layers;
    if sized != layers && !all_layers {
        return None;
    }
    let entries = items.into_iter().rev().map(|item| {
        let mut entry = serde_json::Map::new();
        if item.created > NO_TIME {
            entry.insert("created".into(), rfc3339(item.created).into());
        }
        if !item.created_by.is_empty() {
            entry.insert("created_by".into(), item.created_by.into());
        }
        if !item.comment.is_empty() {
            entry.insert("comment".into(), item.comment.into());
        }
        if !all_layers && item.size == 0 {
            entry.insert("empty_layer".into(), true.into());
        }
        Value::Object(entry)
    });
    Some(entries.collect())
}

/// A config's own `history`, if its entries with a layer are `layers`; else placeholders.
fn config_history(history: &Value, layers: usize) -> Vec<Value> {
    let entries = history.as_array().cloned().unwrap_or_default();
    let with_layer = entries.iter().filter(|e| e["empty_layer"] != true).count();
    if with_layer == layers {
        entries
    } else {
        placeholders(layers)
    }
}

/// One empty history entry per layer, for a base image whose history does not describe them.
fn placeholders(layers: usize) -> Vec<Value> {
    vec![json!({}); layers]
}

/// `value` with every object's keys in sorted order (serde_json keeps insertion order here).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Streams `docker save` of `image` and hands `visit` each entry's name and contents; returns
/// what it kept.
async fn read_saved<T: Send + 'static>(
    docker: &Docker,
    image: &str,
    mut visit: impl FnMut(&str, &mut dyn Read) -> std::io::Result<Option<T>> + Send + 'static,
) -> std::io::Result<Vec<T>> {
    read_blocking(docker.export_image(image), move |saved| {
        let mut archive = tar::Archive::new(saved);
        let mut kept = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            kept.extend(visit(&name, &mut entry)?);
        }
        Ok(kept)
    })
    .await
}

/// Loads the image as a `docker save` tarball; the base layers are already in the engine, so
/// only the new layer (if any) travels.
async fn load(
    docker: &Docker,
    base: &ImageInspect,
    config: &[u8],
    image_id: &str,
    layer: Option<Vec<u8>>,
) -> Result<(), ReproducibleError> {
    let hex_id = image_id.trim_start_matches("sha256:");
    let base_layers = base
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.as_ref())
        .map_or(0, Vec::len);
    let mut layers: Vec<String> = (0..base_layers)
        .map(|i| format!("base-{i}/layer.tar"))
        .collect();
    if layer.is_some() {
        layers.push("new/layer.tar".to_string());
    }
    let manifest = json!([{
        "Config": format!("{hex_id}.json"),
        "RepoTags": Value::Null,
        "Layers": layers,
    }]);
    let bundle = (|| -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, path, data)
        };
        add(&format!("{hex_id}.json"), config)?;
        if let Some(layer) = &layer {
            add("new/layer.tar", layer)?;
        }
        add("manifest.json", manifest.to_string().as_bytes())?;
        tar.into_inner()
    })()
    .map_err(|e| ReproducibleError::Load(e.into()))?;
    let options = ImportImageOptions {
        quiet: true,
        platform: None,
    };
    let mut progress = docker.import_image(options, bollard::body_full(bundle.into()), None);
    let mut loaded = String::new();
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| ReproducibleError::Load(e.into()))?;
        if let Some(stream) = info.stream {
            loaded.push_str(&stream);
        }
    }
    let got = loaded
        .split("Loaded image ID: ")
        .nth(1)
        .map(|rest| rest.trim().to_string())
        .unwrap_or_default();
    if got != image_id {
        return Err(ReproducibleError::Mismatch {
            expected: image_id.to_string(),
            got: if got.is_empty() { loaded } else { got },
        });
    }
    Ok(())
}

/// The OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`), with every
/// layer uncompressed so that each layer's digest is its diff id.
mod oci {
    use std::path::Path;

    use bollard::Docker;
    use kiln_core::BoxError;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    use super::{read_saved, sorted};

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

    /// Writes the layout into a temp directory beside `dir`, then renames it to `dir`.
    pub(super) async fn write(
        docker: &Docker,
        base_id: &str,
        base_layers: &[String],
        config: &[u8],
        layer: Option<&[u8]>,
        dir: &Path,
    ) -> Result<(), BoxError> {
        if dir.exists() {
            return Err("it exists already; remove it first".into());
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)?;
        let temp = tempfile::Builder::new()
            .prefix(".kiln-oci-")
            .tempdir_in(&parent)?;
        let blobs = temp.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;

        // The base layers, from `docker save` of the base image: each `layer.tar` in it is
        // stored under its own sha256, which is its diff id.
        let target = blobs.clone();
        let saved = read_saved(docker, base_id, move |name, entry| {
            if !(name.ends_with("/layer.tar") || name.starts_with("blobs/sha256/")) {
                return Ok(None);
            }
            let mut hash = Sha256::new();
            let part = target.join(".part");
            let mut out = std::fs::File::create(&part)?;
            let mut buf = vec![0; 1 << 16];
            let mut size = 0u64;
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                std::io::Write::write_all(&mut out, &buf[..n])?;
                size += n as u64;
            }
            let digest = hex::encode(hash.finalize());
            std::fs::rename(&part, target.join(&digest))?;
            Ok(Some((format!("sha256:{digest}"), size)))
        })
        .await?;

        let mut layers = Vec::new();
        for diff_id in base_layers {
            let Some((_, size)) = saved.iter().find(|(d, _)| d == diff_id) else {
                return Err(format!("the saved base image has no layer {diff_id}").into());
            };
            layers.push(json!({ "mediaType": LAYER, "digest": diff_id, "size": size }));
        }
        // Blobs of `docker save` that are not base layers (its config, manifests) go.
        for (digest, _) in &saved {
            if !base_layers.contains(digest) {
                std::fs::remove_file(blobs.join(digest.trim_start_matches("sha256:")))?;
            }
        }
        let put = |bytes: &[u8]| -> std::io::Result<(String, usize)> {
            let digest = hex::encode(Sha256::digest(bytes));
            std::fs::write(blobs.join(&digest), bytes)?;
            Ok((format!("sha256:{digest}"), bytes.len()))
        };
        if let Some(layer) = layer {
            let (digest, size) = put(layer)?;
            layers.push(json!({ "mediaType": LAYER, "digest": digest, "size": size }));
        }
        let (config_digest, config_size) = put(config)?;
        let manifest = serde_json::to_vec(&sorted(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers,
        })))?;
        let (manifest_digest, manifest_size) = put(&manifest)?;
        let index = sorted(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
            }],
        }));
        std::fs::write(temp.path().join("index.json"), serde_json::to_vec(&index)?)?;
        std::fs::write(
            temp.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        // The temp dir's own removal then finds nothing to remove.
        std::fs::rename(temp.path(), dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_sorted_at_every_level() {
        let v = json!({ "b": 1, "a": { "z": [ { "y": 1, "x": 2 } ], "c": 3 } });
        assert_eq!(
            serde_json::to_string(&sorted(v)).unwrap(),
            r#"{"a":{"c":3,"z":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn layers_are_sorted_with_clamped_times_and_numeric_owners() {
        let mut export = tar::Builder::new(Vec::new());
        for (path, mtime) in [
            ("etc/zz", 2_000_000_000u64),
            ("etc/aa", 5),
            ("etc", 9),
            ("skip", 1),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o640);
            h.set_uid(999);
            h.set_gid(998);
            h.set_username("systemd-journal").unwrap();
            h.set_mtime(mtime);
            h.set_size(1);
            export.append_data(&mut h, path, &b"x"[..]).unwrap();
        }
        let export = export.into_inner().unwrap();
        let entries = collect(
            &mut export.as_slice(),
            &kept(&["etc", "etc/aa", "etc/zz"]),
            1_000,
        )
        .unwrap();
        let layer = write_layer(entries).unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let seen: Vec<(String, u64, u64, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.username()
                        .unwrap()
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("etc".to_string(), 9, 999, None),
                ("etc/aa".to_string(), 5, 999, None),
                ("etc/zz".to_string(), 1_000, 999, None),
            ]
        );
    }

    fn kept(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    /// A header for an export entry: `kind`, mode 0755, owned by root, mtime 7.
    fn export_header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(7);
        h.set_size(size);
        h
    }

    /// Each entry of `layer`: its path, type, link target, data and PAX records, in order.
    type Seen = (
        String,
        tar::EntryType,
        Option<String>,
        Vec<u8>,
        Vec<(String, Vec<u8>)>,
    );

    fn entries_of(layer: &[u8]) -> Vec<Seen> {
        let mut archive = tar::Archive::new(layer);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut e = entry.unwrap();
            let records = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|r| {
                    let r = r.unwrap();
                    (r.key().unwrap().to_string(), r.value_bytes().to_vec())
                })
                .collect();
            let path = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((path, kind, link, data, records));
        }
        seen
    }

    #[test]
    fn extended_attributes_are_kept_as_sorted_pax_records_and_nothing_else_is() {
        let mut export = tar::Builder::new(Vec::new());
        let capability = [1u8, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        export
            .append_pax_extensions([
                ("SCHILY.xattr.user.zz", &b"last"[..]),
                ("atime", &b"1700000000.5"[..]),
                ("SCHILY.xattr.security.capability", &capability[..]),
                ("mtime", &b"1700000000.25"[..]),
            ])
            .unwrap();
        let mut h = export_header(tar::EntryType::Regular, 2);
        export.append_data(&mut h, "opt/cat", &b"hi"[..]).unwrap();
        let mut h = export_header(tar::EntryType::Regular, 0);
        export.append_data(&mut h, "opt/plain", &b""[..]).unwrap();
        let export = export.into_inner().unwrap();

        let entries = collect(&mut export.as_slice(), &kept(&["opt/cat", "opt/plain"]), 5).unwrap();
        let layer = write_layer(entries).unwrap();
        let seen = entries_of(&layer);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "opt/cat");
        assert_eq!(seen[0].3, b"hi");
        assert_eq!(
            seen[0].4,
            [
                (
                    "SCHILY.xattr.security.capability".to_string(),
                    capability.to_vec()
                ),
                ("SCHILY.xattr.user.zz".to_string(), b"last".to_vec()),
            ]
        );
        assert_eq!(seen[1].0, "opt/plain");
        assert!(seen[1].4.is_empty(), "{seen:?}");

        // The PAX header block itself carries no name, mode or owner (NUL bytes) and time 0:
        // the layer is the same for the same input, byte for byte.
        let pax = &layer[..512];
        let header = tar::Header::from_byte_slice(pax);
        assert_eq!(header.entry_type(), tar::EntryType::XHeader);
        assert_eq!(header.mtime().unwrap(), 0);
        for (field, range) in [("name, mode, owner", 0..124), ("user names", 265..329)] {
            assert!(pax[range].iter().all(|b| *b == 0), "{field} set");
        }
        let again = collect(&mut export.as_slice(), &kept(&["opt/cat", "opt/plain"]), 5);
        assert_eq!(write_layer(again.unwrap()).unwrap(), layer);
    }

    #[test]
    fn hard_links_point_at_the_first_name_of_their_group_and_outside_files_are_copied() {
        // As the engine's export writes them: its walk visits `opt/` before `opt-z`.
        let mut export = tar::Builder::new(Vec::new());
        let mut h = export_header(tar::EntryType::Regular, 7);
        export
            .append_data(&mut h, "bin/busybox", &b"busybox"[..])
            .unwrap();
        let mut h = export_header(tar::EntryType::Directory, 0);
        export.append_data(&mut h, "opt/", &b""[..]).unwrap();
        let mut h = export_header(tar::EntryType::Regular, 1);
        export.append_data(&mut h, "opt/a", &b"a"[..]).unwrap();
        for (name, target) in [
            ("opt/b", "opt/a"),
            ("opt/bb", "bin/busybox"),
            ("opt/bb2", "bin/busybox"),
            ("opt-z", "opt/a"),
        ] {
            let mut h = export_header(tar::EntryType::Link, 0);
            export.append_link(&mut h, name, target).unwrap();
        }
        let export = export.into_inner().unwrap();

        let changed = kept(&["opt", "opt/a", "opt/b", "opt/bb", "opt/bb2", "opt-z"]);
        let mut entries = collect(&mut export.as_slice(), &changed, 100).unwrap();
        assert_eq!(outside_targets(&entries), kept(&["bin/busybox"]));
        let outside = BTreeMap::from([("bin/busybox".to_string(), b"busybox".to_vec())]);
        link_hard_links(&mut entries, outside);
        let seen: Vec<(String, tar::EntryType, Option<String>, Vec<u8>)> =
            entries_of(&write_layer(entries).unwrap())
                .into_iter()
                .map(|(path, kind, link, data, _)| (path, kind, link, data))
                .collect();
        use tar::EntryType::{Directory, Link, Regular};
        let own = |p: &str| p.to_string();
        assert_eq!(
            seen,
            [
                (own("opt"), Directory, None, vec![]),
                (own("opt-z"), Regular, None, b"a".to_vec()),
                (own("opt/a"), Link, Some(own("opt-z")), vec![]),
                (own("opt/b"), Link, Some(own("opt-z")), vec![]),
                (own("opt/bb"), Regular, None, b"busybox".to_vec()),
                (own("opt/bb2"), Link, Some(own("opt/bb")), vec![]),
            ]
        );
    }

    fn item(created: i64, created_by: &str, size: i64) -> ImageHistoryResponseItem {
        ImageHistoryResponseItem {
            id: "<missing>".to_string(),
            created,
            created_by: created_by.to_string(),
            tags: Vec::new(),
            size,
            comment: String::new(),
        }
    }

    #[test]
    fn base_history_marks_empty_layers_only_where_the_sizes_tell() {
        // Newest first, as the endpoint gives them.
        let items = vec![
            item(30, "CMD [\"sh\"]", 0),
            item(20, "COPY x /", 5),
            item(NO_TIME, "", 9),
        ];
        // No time and an empty `created_by` are left out.
        assert_eq!(
            endpoint_history(items, 2).unwrap(),
            [
                json!({}),
                json!({ "created": "1970-01-01T00:00:20Z", "created_by": "COPY x /" }),
                json!({
                    "created": "1970-01-01T00:00:30Z",
                    "created_by": "CMD [\"sh\"]",
                    "empty_layer": true,
                }),
            ]
        );
        // As many entries as layers: each has one, even of size 0 (a layer that only deletes).
        let entries = endpoint_history(vec![item(2, "rm", 0), item(1, "", 9)], 2).unwrap();
        assert!(entries.iter().all(|e| e.get("empty_layer").is_none()));
        // A size-0 layer beside a metadata-only entry: the endpoint cannot tell which is which.
        let items = vec![item(3, "LABEL", 0), item(2, "rm", 0), item(1, "", 9)];
        assert!(endpoint_history(items, 2).is_none());
        assert_eq!(
            endpoint_history(Vec::new(), 2).unwrap(),
            [json!({}), json!({})]
        );
    }

    #[test]
    fn a_config_history_that_does_not_match_its_layers_becomes_placeholders() {
        let history = json!([{ "created_by": "a" }, { "created_by": "b", "empty_layer": true }]);
        assert_eq!(
            config_history(&history, 1),
            history.as_array().unwrap().clone()
        );
        assert_eq!(config_history(&history, 2), [json!({}), json!({})]);
        assert_eq!(config_history(&Value::Null, 1), [json!({})]);
    }
}
