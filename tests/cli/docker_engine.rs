//! The `docker` builder through the real `kiln` binary, for what only a process of its own can
//! be given: `DOCKER_HOST` and `SOURCE_DATE_EPOCH` in its environment.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_testkit::docker::{busybox_image, engine, inspect_image, remove_image, SOCKET};

use crate::fixture::{Kiln, Run};

/// A one-source docker template committing a busybox image provisioned by `inline` (HCL).
fn template(k: &Kiln, name: &str, inline: &str) {
    k.write(
        "d.pkr.hcl",
        &format!(
            r#"
source "docker" "{name}" {{
  image  = "{base}"
  commit = true
}}
build {{
  sources = ["source.docker.{name}"]
  provisioner "shell" {{
    inline = [{inline}]
  }}
}}
"#,
            base = busybox_image(&[])
        ),
    );
}

/// The id of the one artifact a successful `--json` run produced.
fn artifact_id(run: &Run) -> String {
    run.expect_code(0);
    let events = run.events();
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "artifact_produced")
        .filter_map(|e| e["artifact"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{}", run.stdout());
    ids[0].to_string()
}

/// Forwards TCP connections on `127.0.0.1:PORT` to the engine's socket, counting them.
fn engine_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let unix = UnixStream::connect(SOCKET).unwrap();
            let (mut tcp_in, mut unix_out) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || {
                pipe(&mut tcp_in, &mut unix_out);
                unix_out.shutdown(std::net::Shutdown::Write).ok();
            });
            let (mut unix_in, mut tcp_out) = (unix, tcp);
            std::thread::spawn(move || {
                pipe(&mut unix_in, &mut tcp_out);
                tcp_out.shutdown(std::net::Shutdown::Write).ok();
            });
        }
    });
    (port, count)
}

fn pipe(from: &mut impl Read, to: &mut impl Write) {
    std::io::copy(from, to).ok();
}

#[test]
fn docker_host_names_the_engine_kiln_talks_to() {
    if engine().is_none() {
        return;
    }
    let k = Kiln::new();
    template(&k, "remote", "\"echo remote > /remote.txt\"");
    let (port, connections) = engine_proxy();
    let run = k
        .cmd(&["build", "--json", "d.pkr.hcl"])
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let image = artifact_id(&Run(run));
    let seen = connections.load(Ordering::SeqCst);
    remove_image(&image);
    assert!(seen > 0, "kiln never connected to DOCKER_HOST");
}

#[test]
fn source_date_epoch_fixes_the_image_time_and_rebuilds_give_the_same_id() {
    if engine().is_none() {
        return;
    }
    let epoch = 1_700_000_000;
    let k = Kiln::new();
    template(&k, "dated", "\"echo dated > /dated.txt\"");
    let build = || {
        let run = k
            .cmd(&["build", "--json", "d.pkr.hcl"])
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .output()
            .unwrap();
        artifact_id(&Run(run))
    };
    let first = build();
    let raw = inspect_image(&first);
    let second = build();
    remove_image(&first);
    remove_image(&second);
    assert_eq!(first, second, "two builds at one SOURCE_DATE_EPOCH differ");
    let created = chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(raw["Created"], created.as_str());
}
