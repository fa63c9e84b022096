//! The component registry: every builder, provisioner and post-processor this binary knows.

use kiln_core::component::Registry;

pub fn registry() -> Registry {
    let mut r = Registry::default();
    null::register(&mut r);
    qemu::register(&mut r);
    shell_local::register(&mut r);
    manifest::register(&mut r);
    r
}
