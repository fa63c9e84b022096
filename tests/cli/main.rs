//! Integration tests of the `kiln` binary: one test binary, one module per area.

mod build;
mod docker_engine;
mod examples;
mod fixture;
mod fmt;
mod qemu_example;
mod usage;
mod validate;
