//! Unit tests of the docker post-processors: names, configuration and docs (credentials: `credentials/tests.rs`).

use std::path::PathBuf;

use serde_json::json;

use super::*;

fn config(kind: &str, attrs: Value) -> Config {
    Config::from_json(kind, attrs)
}

#[test]
fn names_split_into_repository_and_tag() {
    assert_eq!(split_name("app:1.0"), ("app", "1.0"));
    assert_eq!(
        split_name("127.0.0.1:5000/app"),
        ("127.0.0.1:5000/app", "latest")
    );
    assert_eq!(
        split_name("127.0.0.1:5000/app:2"),
        ("127.0.0.1:5000/app", "2")
    );
    assert_eq!(registry_of("127.0.0.1:5000/app"), "127.0.0.1:5000");
    assert_eq!(registry_of("library/debian"), "docker.io");
    assert_eq!(
        registry_of("registry.example.com/team/app"),
        "registry.example.com"
    );
}

#[test]
fn required_options_are_checked() {
    let err = |kind: &dyn PostProcessorKind, attrs| match kind
        .configure(&config(kind.type_name(), attrs))
    {
        Ok(_) => panic!("accepted"),
        Err(d) => d.to_string(),
    };
    assert!(err(&TagKind, json!({})).contains("`repository`"));
    assert!(err(&SaveKind, json!({})).contains("`path`"));
    assert!(err(&ImportKind, json!({})).contains("`repository`"));
    assert!(TagKind
        .configure(&config(
            "docker-tag",
            json!({ "repository": "a", "tags": ["1"], "force": true })
        ))
        .is_ok());
}

#[test]
fn inputs_that_are_not_images_are_refused() {
    let input = Artifact {
        builder_type: "null".to_string(),
        id: "Null".to_string(),
        ..Artifact::default()
    };
    assert!(image_of(&input)
        .unwrap_err()
        .to_string()
        .contains("not a docker image"));
}

#[test]
fn every_option_is_documented() {
    let mut registry = Registry::default();
    register(&mut registry);
    assert_eq!(registry.post_processors.len(), 4);
    for (name, kind) in &registry.post_processors {
        let page = manifest_dir().join(format!("../../docs/post-processors/{name}.md"));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        for opt in kind.options() {
            assert!(
                text.contains(&format!("`{}`", opt.name)),
                "option `{}` is not documented in {}",
                opt.name,
                page.display()
            );
        }
    }
}

/// This crate's directory (the compile-time value can name another checkout).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
