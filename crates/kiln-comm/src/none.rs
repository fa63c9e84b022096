//! The `none` communicator: there is no way into the machine, and every operation says so.

use std::path::Path;

use async_trait::async_trait;

use crate::{CommError, Communicator, ExitStatus, OutputSink, RemoteCommand, UploadOptions, UploadSource};

/// Used by builders with no machine (`null` with `communicator = "none"`); provisioners that need
/// the machine fail with a clear error instead of hanging.
#[derive(Debug, Default)]
pub struct NoneCommunicator;

fn unsupported(operation: &'static str) -> CommError {
    CommError::Unsupported {
        communicator: "none",
        operation,
    }
}

#[async_trait]
impl Communicator for NoneCommunicator {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn exec(&self, _: &RemoteCommand, _: &mut dyn OutputSink) -> Result<ExitStatus, CommError> {
        Err(unsupported("run commands"))
    }

    async fn upload(&self, _: UploadSource, _: &str, _: &UploadOptions) -> Result<(), CommError> {
        Err(unsupported("upload files"))
    }

    async fn upload_dir(&self, _: &Path, _: &str, _: &UploadOptions) -> Result<(), CommError> {
        Err(unsupported("upload files"))
    }

    async fn download(&self, _: &str, _: &Path) -> Result<(), CommError> {
        Err(unsupported("download files"))
    }

    async fn download_dir(&self, _: &str, _: &Path) -> Result<(), CommError> {
        Err(unsupported("download files"))
    }
}
