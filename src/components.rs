//! The component registry: every builder, provisioner and post-processor this binary knows.

use kiln_core::component::Registry;

pub fn registry() -> Registry {
    let mut r = Registry::default();
    null::register(&mut r);
    docker::register(&mut r);
    qemu::register(&mut r);
    shell_local::register(&mut r);
    shell::register(&mut r);
    file::register(&mut r);
    breakpoint::register(&mut r);
    manifest::register(&mut r);
    docker_post_processors::register(&mut r);
    ansible::register(&mut r);
    r
}
