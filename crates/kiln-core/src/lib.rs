//! Kiln's engine: template parsing and diagnostics, build plans, component traits, the typed step
//! runner with its cleanup stack, and the event stream.
//!
//! `kiln-core` knows nothing about QEMU, Docker or any other builder, and never prints: everything
//! it has to say goes out as [`event::Event`]s, rendered by the CLI.

// A `Diagnostic` (message, label, help, span, secrets) is the error of template functions; it
// exists only on the error path, where its size costs nothing worth boxing it for.
#![allow(clippy::result_large_err)]

pub mod artifact;
pub mod component;
pub mod diag;
pub mod event;
pub mod plan;
pub mod process;
pub mod runner;
pub mod sensitive;
pub mod template;

/// A boxed error that components return from steps; the runner wraps it with the step's name.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Kiln's version, recorded in manifests and events.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
