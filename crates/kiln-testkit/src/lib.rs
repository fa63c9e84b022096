//! Test fixtures shared by Kiln crates.
