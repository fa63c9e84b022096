//! Reproducible image output: Kiln writes the new layer and the image config itself, then loads
//! the image into the engine (`POST /images/load`), instead of `docker commit`.
//!
//! - The layer holds the container's filesystem changes (`GET /containers/{id}/changes`), read
//!   from the container's export: entries sorted by path, modification times clamped to
//!   `SOURCE_DATE_EPOCH`, numeric owners only (no user or group names), plain GNU headers (no
//!   access or change times), and a whiteout (`.wh.NAME`) for each deleted path.
//! - The config is the one the engine would commit (base config, keep-alive removed, `changes`
//!   applied: made by a throwaway `commit` so that Kiln does not re-implement Dockerfile
//!   parsing), with `created` set to `SOURCE_DATE_EPOCH`, no container id, hostname or history,
//!   and its JSON keys sorted.
//! - The image id is the sha256 of that config, so two builds that make the same changes on the
//!   same base give the same id.
//!
//! Not carried over yet: extended attributes (file capabilities) and hard links to files outside
//! the layer.

use std::collections::BTreeMap;
use std::io::Read;

use bollard::models::{ChangeType, ImageInspect};
use bollard::query_parameters::{ImportImageOptions, RemoveImageOptions};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use kiln_core::BoxError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
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

/// One entry of the new layer.
struct Entry {
    header: tar::Header,
    link: Option<std::path::PathBuf>,
    data: Vec<u8>,
}

/// Writes the container's changes as a deterministic image and loads it; returns its id.
pub(crate) async fn commit(
    docker: &Docker,
    id: &str,
    base: &ImageInspect,
    s: &Settings,
    epoch: i64,
) -> Result<String, BoxError> {
    let changes = docker
        .container_changes(id)
        .await
        .map_err(|source| ReproducibleError::Changes {
            id: id.to_string(),
            source,
        })?
        .unwrap_or_default();
    let mut kept = BTreeMap::new();
    let mut deleted = Vec::new();
    for change in changes {
        let path = change.path.trim_start_matches('/').to_string();
        match change.kind {
            ChangeType::_2 => deleted.push(path),
            _ => {
                kept.insert(path, ());
            }
        }
    }

    let layer = layer(docker, id, kept, deleted, epoch as u64).await?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = config_bytes(docker, id, base, s, epoch, &diff_id).await?;
    let image_id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    if let Some(dir) = &s.oci_layout {
        let base_id = base.id.clone().unwrap_or_default();
        let base_layers = diff_ids_of(base);
        oci::write(docker, &base_id, &base_layers, &config, &layer, dir)
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

/// The layer tar: the changed entries of the container's export, normalised, plus whiteouts.
async fn layer(
    docker: &Docker,
    id: &str,
    kept: BTreeMap<String, ()>,
    deleted: Vec<String>,
    epoch: u64,
) -> Result<Vec<u8>, ReproducibleError> {
    let stream = docker.export_container(id).map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    let export_error = |source| ReproducibleError::Export {
        id: id.to_string(),
        source,
    };
    let entries = tokio::task::spawn_blocking(move || {
        let mut bridge = SyncIoBridge::new(Box::pin(reader));
        collect(&mut bridge, &kept, epoch)
    })
    .await
    .expect("the export reader does not panic")
    .map_err(export_error)?;
    let mut entries = entries;
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
                data: Vec::new(),
            },
        );
    }
    write_layer(entries).map_err(export_error)
}

/// Reads the export and keeps the entries named in `kept`, with normalised headers.
fn collect(
    export: &mut dyn Read,
    kept: &BTreeMap<String, ()>,
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
        if !kept.contains_key(&path) {
            continue;
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
        out.insert(path, Entry { header, link, data });
    }
    Ok(out)
}

fn write_layer(entries: BTreeMap<String, Entry>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mut entry) in entries {
        match &entry.link {
            Some(link) => tar.append_link(&mut entry.header, &path, link)?,
            None => tar.append_data(&mut entry.header, &path, entry.data.as_slice())?,
        }
    }
    tar.into_inner()
}

/// The image config, canonical JSON: the engine's own commit config, made reproducible.
async fn config_bytes(
    docker: &Docker,
    id: &str,
    base: &ImageInspect,
    s: &Settings,
    epoch: i64,
    diff_id: &str,
) -> Result<Vec<u8>, BoxError> {
    // A throwaway commit applies `changes` exactly as `docker commit` would.
    let scratch = crate::steps::commit(docker, id, base, s).await?;
    let committed = docker.inspect_image(&scratch).await;
    docker
        .remove_image(&scratch, None::<RemoveImageOptions>, None)
        .await?;
    let committed = committed?;
    let mut diff_ids: Vec<Value> = diff_ids_of(base).into_iter().map(Value::from).collect();
    diff_ids.push(diff_id.into());
    let created = chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut config = json!({
        "architecture": committed.architecture,
        "os": committed.os,
        "config": serde_json::to_value(committed.config.unwrap_or_default())?,
        "created": created,
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

/// Loads the image as a `docker save` tarball; the base layers are already in the engine, so
/// only the new layer travels.
async fn load(
    docker: &Docker,
    base: &ImageInspect,
    config: &[u8],
    image_id: &str,
    layer: Vec<u8>,
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
    layers.push("new/layer.tar".to_string());
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
        add("new/layer.tar", &layer)?;
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
    use std::io::Read;
    use std::path::Path;

    use bollard::Docker;
    use futures_util::TryStreamExt;
    use kiln_core::BoxError;
    use serde_json::json;
    use sha2::{Digest, Sha256};
    use tokio_util::io::{StreamReader, SyncIoBridge};

    use super::sorted;

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

    /// Writes the layout into a temp directory beside `dir`, then renames it to `dir`.
    pub(super) async fn write(
        docker: &Docker,
        base_id: &str,
        base_layers: &[String],
        config: &[u8],
        layer: &[u8],
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
        let stream = docker.export_image(base_id).map_err(std::io::Error::other);
        let reader = StreamReader::new(stream);
        let target = blobs.clone();
        let saved = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(String, u64)>> {
            let mut bridge = SyncIoBridge::new(Box::pin(reader));
            let mut archive = tar::Archive::new(&mut bridge as &mut dyn Read);
            let mut found = Vec::new();
            for entry in archive.entries()? {
                let mut entry = entry?;
                let name = entry.path()?.to_string_lossy().into_owned();
                if !(name.ends_with("/layer.tar") || name.starts_with("blobs/sha256/")) {
                    continue;
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
                found.push((format!("sha256:{digest}"), size));
            }
            Ok(found)
        })
        .await
        .expect("the save reader does not panic")?;

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
        let (layer_digest, layer_size) = put(layer)?;
        layers.push(json!({ "mediaType": LAYER, "digest": layer_digest, "size": layer_size }));
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
        let kept: BTreeMap<String, ()> = ["etc", "etc/aa", "etc/zz"]
            .into_iter()
            .map(|p| (p.to_string(), ()))
            .collect();
        let entries = collect(&mut export.as_slice(), &kept, 1_000).unwrap();
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
}
