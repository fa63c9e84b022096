//! The `breakpoint` provisioner: pauses the build with a note until Enter is pressed, so that the
//! machine can be inspected mid-build. Without a terminal on stdin it is skipped with a message.

use std::io::IsTerminal;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::component::{OptionSpec, ProvisionCtx, Provisioner, ProvisionerKind, Registry};
use kiln_core::diag::Diagnostics;
use kiln_core::event::Level;
use kiln_core::plan::Config;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

/// The type name in templates.
pub const TYPE_NAME: &str = "breakpoint";

/// Adds the `breakpoint` provisioner.
pub fn register(registry: &mut Registry) {
    registry.add_provisioner(Arc::new(BreakpointKind));
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "disable",
        ty: "bool",
        required: false,
        doc: "Skip this breakpoint without pausing.",
    },
    OptionSpec {
        name: "note",
        ty: "string",
        required: false,
        doc: "Text shown while the build is paused.",
    },
];

/// The options as written (see `docs/provisioners/breakpoint.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    disable: bool,
    note: String,
}

struct BreakpointKind;

impl ProvisionerKind for BreakpointKind {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&self, config: &Config) -> Result<Box<dyn Provisioner>, Diagnostics> {
        Ok(Box::new(Breakpoint(config.decode()?)))
    }
}

struct Breakpoint(Options);

#[async_trait]
impl Provisioner for Breakpoint {
    async fn provision(&self, ctx: &ProvisionCtx<'_>) -> Result<(), kiln_core::BoxError> {
        let events = &ctx.build.events;
        let note = match self.0.note.as_str() {
            "" => String::new(),
            note => format!(": {note}"),
        };
        if self.0.disable {
            events.message(Level::Info, format!("breakpoint disabled{note}"));
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            events.message(
                Level::Info,
                format!("skipping breakpoint{note} (stdin is not a terminal)"),
            );
            return Ok(());
        }
        events.message(
            Level::Info,
            format!("paused at breakpoint{note}; press Enter to continue"),
        );
        let mut line = String::new();
        tokio::io::BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await?;
        Ok(())
    }
}
