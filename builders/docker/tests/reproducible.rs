//! Reproducible docker output against a real engine: file capabilities, hard links and the image
//! history survive Kiln's own layer and config, and two builds still give the same image id.

use std::io::Read;
use std::path::Path;

use bollard::models::ContainerCreateBody;
use kiln_core::runner::OnError;
use kiln_testkit::docker::{busybox_image, debian_image, engine, inspect_image};

mod support;

use support::{
    artifact_id, assert_no_container_of, build, docker, one_source_template, repo_dir, run,
    RemoveImageOnDrop,
};

/// Builds the one-source template `(name, base, attrs, body)` (see `one_source_template`)
/// reproducibly; returns the image id. Checks that the build left no container.
async fn build_image(name: &str, base: &str, attrs: &str, body: &str) -> String {
    let attrs = format!("reproducible = true\n  {attrs}");
    let dir = one_source_template(name, base, &attrs, body);
    let (summary, _, run_id) = build(dir.path(), &[], OnError::Cleanup).await;
    assert_no_container_of(run_id);
    artifact_id(&summary)
}

/// A `shell` provisioner block running `commands` (HCL strings, quoted).
fn shell(commands: &[&str]) -> String {
    let inline: Vec<String> = commands.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "provisioner \"shell\" {{\n    inline = [{}]\n  }}",
        inline.join(", ")
    )
}

/// Runs `sh -c script` in `image` as `user`; returns its output.
async fn sh_as(user: &str, image: &str, script: &str) -> String {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some(user.to_string()),
        entrypoint: Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
        cmd: Some(vec![script.to_string()]),
        ..ContainerCreateBody::default()
    };
    run(&docker().await, body).await
}

/// Sets the file capability `cap_dac_override+ep` on /opt/cap/cat, as `setcap` would: the
/// Debian base has no `setcap` (libcap2-bin) or `setfattr` (attr), but it has Perl, whose
/// `syscall` calls setxattr(2). The value is a `vfs_cap_data` of revision 2 with the effective
/// flag and bit 1 (CAP_DAC_OVERRIDE) permitted. Quoted for an HCL string.
const SETCAP: &str = r#"perl -e 'require \"syscall.ph\"; my ($p, $n, $v) = (\"/opt/cap/cat\", \"security.capability\", pack(\"V5\", 0x02000001, 2, 0, 0, 0)); syscall(&SYS_setxattr, $p, $n, $v, length $v, 0) == 0 or die \"setxattr: $!\"'"#;

#[tokio::test]
async fn file_capabilities_survive_reproducible_builds() {
    if engine().is_none() {
        return;
    }
    let base = debian_image(&repo_dir());
    let body = shell(&["mkdir -p /opt/cap && cp /bin/cat /opt/cap/cat", SETCAP]);
    let a = build_image("caps", &base, "", &body).await;
    let _image = RemoveImageOnDrop(a.clone());
    let b = build_image("caps", &base, "", &body).await;
    let _b = RemoveImageOnDrop(b.clone());
    assert_eq!(
        a, b,
        "two reproducible builds with a file capability differ"
    );
    // The capability takes effect: `nobody` reads /etc/shadow through the copy of `cat`, and
    // not through the plain one.
    let check =
        "/opt/cap/cat /proc/self/status | grep CapEff; /opt/cap/cat /etc/shadow | head -c 5; \
                 echo; cat /etc/shadow >/dev/null 2>&1 || echo plain-cat-denied";
    assert_eq!(
        sh_as("nobody", &a, check).await,
        "CapEff:\t0000000000000002\nroot:\nplain-cat-denied\n"
    );
}

/// A blob of the OCI image layout `layout`, by digest.
fn blob(layout: &Path, digest: &serde_json::Value) -> Vec<u8> {
    let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// The entries of `layout`'s last layer: path, type and link target, in order.
fn last_layer_entries(layout: &Path) -> Vec<(String, tar::EntryType, Option<String>)> {
    let json = |bytes: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&bytes).unwrap() };
    let index = json(std::fs::read(layout.join("index.json")).unwrap());
    let manifest = json(blob(layout, &index["manifests"][0]["digest"]));
    let last = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let layer = blob(layout, &last["digest"]);
    let mut archive = tar::Archive::new(layer.as_slice());
    let entries = archive.entries().unwrap().map(|e| {
        let mut e = e.unwrap();
        e.read_to_end(&mut Vec::new()).unwrap();
        let link = e.link_name().unwrap().map(|l| l.display().to_string());
        (
            e.path().unwrap().display().to_string(),
            e.header().entry_type(),
            link,
        )
    });
    entries.collect()
}

#[tokio::test]
async fn hard_links_stay_links_with_their_target_first() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[]);
    let body = shell(&[
        "mkdir /opt && echo a > /opt/a && ln /opt/a /opt/b && ln /opt/a /opt-z",
        "ln /bin/busybox /opt/busybox && ln /bin/busybox /opt/busybox2",
    ]);
    let out = tempfile::tempdir().unwrap();
    let layout = |name: &str| out.path().join(name);
    let attrs = |name: &str| format!("oci_layout = \"{}\"", layout(name).display());
    let a = build_image("links", &base, &attrs("first"), &body).await;
    let _image = RemoveImageOnDrop(a.clone());
    let b = build_image("links", &base, &attrs("second"), &body).await;
    let _b = RemoveImageOnDrop(b.clone());
    assert_eq!(a, b, "two reproducible builds with hard links differ");

    // In the layer, every link points at a name written before it; `opt-z` sorts first
    // (`-` before `/`), so it holds the content. The new names of /bin/busybox (a base file)
    // hold its content and are linked among themselves.
    let entries = last_layer_entries(&layout("first"));
    for (i, (path, kind, link)) in entries.iter().enumerate() {
        if *kind == tar::EntryType::Link {
            let target = link.as_deref().unwrap();
            let at = entries.iter().position(|(p, _, _)| p == target);
            assert!(
                at.is_some_and(|at| at < i),
                "{path} links to {target}: {entries:?}"
            );
        }
    }
    let of = |name: &str| {
        let found = entries.iter().find(|(p, _, _)| p == name);
        found.map(|(_, kind, link)| (*kind, link.clone()))
    };
    use tar::EntryType::{Link, Regular};
    let link_to = |target: &str| Some((Link, Some(target.to_string())));
    assert_eq!(of("opt-z"), Some((Regular, None)));
    assert_eq!(of("opt/a"), link_to("opt-z"));
    assert_eq!(of("opt/b"), link_to("opt-z"));
    assert_eq!(of("opt/busybox"), Some((Regular, None)));
    assert_eq!(of("opt/busybox2"), link_to("opt/busybox"));
    assert_eq!(of("bin/busybox"), None);

    let check =
        "stat -c '%i %h' /opt/a /opt/b /opt-z | uniq; stat -c %h /opt/busybox /bin/busybox; \
                 cmp /opt/busybox /bin/busybox && /opt/busybox echo works";
    let inside = sh_as("0", &a, check).await;
    let mut lines = inside.lines();
    assert!(lines.next().unwrap().ends_with(" 3"), "{inside}");
    assert_eq!(lines.collect::<Vec<_>>(), ["2", "1", "works"], "{inside}");
}

#[tokio::test]
async fn history_ends_with_the_kiln_entry_and_builds_stay_reproducible() {
    if engine().is_none() {
        return;
    }
    let base = busybox_image(&[]);
    let attrs = "message = \"provisioned by kiln\"\n  author = \"Kiln Tests <tests@example.org>\"";
    let body = shell(&["echo history > /history.txt"]);
    let a = build_image("hist", &base, attrs, &body).await;
    let _image = RemoveImageOnDrop(a.clone());
    let b = build_image("hist", &base, attrs, &body).await;
    let _b = RemoveImageOnDrop(b.clone());
    assert_eq!(a, b, "two reproducible builds with a history differ");
    let docker = docker().await;
    // Newest first.
    let history = docker.image_history(&a).await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    let kiln = &history[0];
    assert_eq!(kiln.created_by, "kiln build docker.hist");
    assert_eq!(kiln.comment, "provisioned by kiln");
    assert_eq!(kiln.created, 0);
    assert!(kiln.size > 0, "{kiln:?}");
    let base = docker.image_history(&base).await.unwrap();
    assert_eq!(history[1].comment, base[0].comment);
    assert_eq!(history[1].created, base[0].created);
    let raw = inspect_image(&a);
    assert_eq!(raw["Author"], "Kiln Tests <tests@example.org>");
    assert_eq!(raw["RootFS"]["Layers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn metadata_only_builds_add_no_layer_and_later_histories_stay_exact() {
    if engine().is_none() {
        return;
    }
    // A layer of size 0 (it only deletes), then a build that changes only metadata.
    let rm = build_image("rm", &busybox_image(&[]), "", &shell(&["rm /bin/vi"])).await;
    let _rm = RemoveImageOnDrop(rm.clone());
    let meta = build_image("meta", &rm, "changes = [\"LABEL kiln.test=meta\"]", "").await;
    let _meta = RemoveImageOnDrop(meta.clone());
    let raw = inspect_image(&meta);
    assert_eq!(
        raw["RootFS"],
        inspect_image(&rm)["RootFS"],
        "a layer was added"
    );
    assert_eq!(raw["Config"]["Labels"]["kiln.test"], "meta");

    // On that base the history endpoint cannot tell which size-0 entry has a layer; the
    // config's own history (from `docker save`) does.
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let attrs = format!("oci_layout = \"{}\"", layout.display());
    let body = shell(&["echo last > /last.txt"]);
    let last = build_image("last", &meta, &attrs, &body).await;
    let _last = RemoveImageOnDrop(last.clone());
    let config: serde_json::Value =
        serde_json::from_slice(&blob(&layout, &last.as_str().into())).unwrap();
    let history = config["history"].as_array().unwrap();
    let described: Vec<(&str, bool)> = history
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap_or(""),
                h["empty_layer"] == true,
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("", false),
            ("kiln build docker.rm", false),
            ("kiln build docker.meta", true),
            ("kiln build docker.last", false),
        ]
    );
    assert_eq!(history[0]["comment"], "Imported from -");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    // The engine agrees: its history endpoint maps the three layers onto those entries.
    let history = docker().await.image_history(&last).await.unwrap();
    let sizes: Vec<i64> = history.iter().map(|h| h.size).collect();
    assert_eq!(sizes.len(), 4);
    assert!(sizes[0] > 0 && sizes[1] == 0 && sizes[3] > 0, "{sizes:?}");
}
