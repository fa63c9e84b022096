//! What a build produced: files with digests, or an identifier the builder understands.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One file of an artifact, with its content digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

/// The result of a builder or post-processor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The type of the builder (or post-processor) that made it, e.g. `null`, `qemu`.
    pub builder_type: String,
    /// A builder-specific identifier (image id, AMI ids, a path); may be empty.
    pub id: String,
    /// Files that make up the artifact.
    pub files: Vec<ArtifactFile>,
    /// Builder-specific data (e.g. repository digests), recorded in manifests.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
}
