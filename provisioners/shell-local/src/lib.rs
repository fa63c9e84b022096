//! placeholder (the components helper writes the real crate)

/// Registers this crate's component kinds.
pub fn register(_: &mut kiln_core::component::Registry) {}
