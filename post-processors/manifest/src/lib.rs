//! The `manifest` post-processor: appends a record of each build's artifact (files with size and
//! sha256, artifact id, run id) to a JSON file in Packer's format, atomically and safely when
//! several builds finish at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kiln_core::artifact::Artifact;
use kiln_core::component::{OptionSpec, PostProcessed, PostProcessor, PostProcessorKind, Registry};
use kiln_core::diag::Diagnostics;
use kiln_core::plan::Config;
use kiln_core::runner::BuildCtx;
use serde::{Deserialize, Serialize};

mod write;

pub use write::ManifestError;

/// The type name in templates.
pub const TYPE_NAME: &str = "manifest";

/// Where the manifest goes when `output` is not set (Packer's default).
pub const DEFAULT_OUTPUT: &str = "packer-manifest.json";

/// Adds the `manifest` post-processor.
pub fn register(registry: &mut Registry) {
    registry.add_post_processor(Arc::new(ManifestKind));
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "output",
        ty: "string",
        required: false,
        doc: "Path of the manifest file, relative to the current directory.",
    },
    OptionSpec {
        name: "strip_path",
        ty: "bool",
        required: false,
        doc: "Record only the file name of each artifact file, without its directory.",
    },
    OptionSpec {
        name: "strip_time",
        ty: "bool",
        required: false,
        doc: "Leave out `build_time`, so that rebuilds write the same record.",
    },
    OptionSpec {
        name: "custom_data",
        ty: "map(string)",
        required: false,
        doc: "Extra strings recorded with the build under `custom_data`.",
    },
    OptionSpec {
        name: "keep_input_artifact",
        ty: "bool",
        required: false,
        doc: "Accepted for compatibility; the input artifact is always passed on and kept.",
    },
];

/// The options as written (see `docs/post-processors/manifest.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    output: Option<PathBuf>,
    strip_path: bool,
    strip_time: bool,
    custom_data: BTreeMap<String, String>,
    // The input artifact is always kept; accepted so that Packer templates decode.
    #[allow(dead_code)]
    keep_input_artifact: Option<bool>,
}

struct ManifestKind;

impl PostProcessorKind for ManifestKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn PostProcessor>, Diagnostics> {
        let opts: Options = config.decode()?;
        Ok(Box::new(Manifest {
            output: opts.output.unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT)),
            strip_path: opts.strip_path,
            strip_time: opts.strip_time,
            custom_data: opts.custom_data,
        }))
    }
}

struct Manifest {
    output: PathBuf,
    strip_path: bool,
    strip_time: bool,
    custom_data: BTreeMap<String, String>,
}

/// One entry of `builds`, in Packer's shape plus `kiln_build` (and `data` when the artifact has
/// builder-specific data).
#[derive(Debug, Serialize)]
struct BuildRecord<'a> {
    /// The source's name, as Packer records it.
    name: &'a str,
    builder_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_time: Option<u64>,
    files: Vec<FileRecord>,
    artifact_id: &'a str,
    packer_run_uuid: String,
    custom_data: &'a BTreeMap<String, String>,
    /// The full build name, `BUILD.TYPE.NAME` or `TYPE.NAME`.
    kiln_build: &'a str,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    data: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct FileRecord {
    name: String,
    size: u64,
    sha256: String,
}

impl Manifest {
    fn record(&self, ctx: &BuildCtx, artifact: &Artifact) -> serde_json::Value {
        let files = artifact
            .files
            .iter()
            .map(|f| {
                let name = match (self.strip_path, f.path.file_name()) {
                    (true, Some(base)) => base.to_string_lossy().into_owned(),
                    _ => f.path.to_string_lossy().into_owned(),
                };
                FileRecord {
                    name,
                    size: f.size,
                    sha256: f.sha256.clone(),
                }
            })
            .collect();
        let build_time = (!self.strip_time).then(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let record = BuildRecord {
            name: &ctx.source_name,
            // The builder's type, as Packer writes it, even after other post-processors made
            // the artifact (`docker-push`).
            builder_type: &ctx.source_type,
            build_time,
            files,
            artifact_id: &artifact.id,
            packer_run_uuid: ctx.run_id.to_string(),
            custom_data: &self.custom_data,
            kiln_build: &ctx.build_name,
            data: &artifact.data,
        };
        serde_json::to_value(record).expect("a build record is always valid JSON")
    }
}

#[async_trait]
impl PostProcessor for Manifest {
    async fn process(
        &self,
        ctx: &BuildCtx,
        input: Artifact,
    ) -> Result<PostProcessed, kiln_core::BoxError> {
        let record = self.record(ctx, &input);
        let output = self.output.clone();
        let run_id = ctx.run_id.to_string();
        let written =
            tokio::task::spawn_blocking(move || write::append(&output, record, &run_id)).await;
        match written {
            Ok(result) => result?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
        // A manifest passes its input on, as Packer's does.
        Ok(PostProcessed {
            artifact: input,
            keep_input: true,
        })
    }
}

#[cfg(test)]
mod tests;
