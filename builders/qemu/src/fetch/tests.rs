//! Tests of the source fetcher against HTTP servers on loopback: Python's `http.server` (a real
//! server) for ordinary downloads, and a fake written here for faults a real server cannot be
//! made to produce on demand.

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kiln_core::event::{Event, Redactor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use super::*;

/// Tries come quickly in tests.
const QUICK: Retry = Retry {
    attempts: 3,
    first_delay: Duration::from_millis(10),
};

/// Content that differs from byte to byte, `len` bytes long.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha256(data: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    h.finish()
}

fn digest_of(data: &[u8]) -> Checksum {
    Checksum::parse(&format!("sha256:{}", sha256(data))).unwrap()
}

fn events() -> (EventSink, UnboundedReceiver<Event>) {
    EventSink::channel(Uuid::nil(), Redactor::default())
}

fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<EventKind> {
    std::iter::from_fn(|| rx.try_recv().ok().map(|e| e.kind)).collect()
}

fn messages(events: &[EventKind], level: Level) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::Message { level: l, text } if *l == level => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// The names of the files in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(read) => read
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A real HTTP server: Python's `http.server` serving a temporary directory on a loopback port.
struct PythonServer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PythonServer {
    /// Serves `files` (name, content), and whatever is written in [`PythonServer::dir`] later.
    fn serving(files: &[(&str, &[u8])]) -> PythonServer {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .arg("0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run python3 -m http.server");
        // It says "Serving HTTP on 127.0.0.1 port PORT (...)" once it listens.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        PythonServer { child, port, dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake server does with one request.
enum Reply {
    Status(u16),
    Body(Vec<u8>),
    /// Announces the whole body, sends its first `after` bytes and closes the connection.
    Cut {
        body: Vec<u8>,
        after: usize,
    },
    /// Announces the whole body, sends its first `after` bytes and then nothing, ever.
    Stall {
        body: Vec<u8>,
        after: usize,
    },
}

/// A fake HTTP server: it answers each request with the next of its scripted replies (404 once
/// they run out) and records the paths asked for. One connection at a time, `Connection: close`.
struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    async fn start(replies: Vec<Reply>) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let mut replies = VecDeque::from(replies);
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or_default();
                seen.lock().unwrap().push(path.to_string());
                let (status, body, sent, stall) =
                    match replies.pop_front().unwrap_or(Reply::Status(404)) {
                        Reply::Status(code) => (code, Vec::new(), 0, false),
                        Reply::Body(body) => {
                            let len = body.len();
                            (200, body, len, false)
                        }
                        Reply::Cut { body, after } => (200, body, after, false),
                        Reply::Stall { body, after } => (200, body, after, true),
                    };
                let head = format!(
                    "HTTP/1.1 {status} Fake\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body[..sent]).await;
                let _ = socket.flush().await;
                if stall {
                    std::future::pending::<()>().await;
                }
            }
        });
        FakeServer {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[test]
fn the_cache_directory_follows_the_environment() {
    let s = |v: &str| Some(OsString::from(v));
    assert_eq!(
        cache_dir_from(s("/c"), s("/x"), s("/h")),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        cache_dir_from(None, s("/x"), s("/h")),
        Some(PathBuf::from("/x/kiln"))
    );
    assert_eq!(
        cache_dir_from(None, None, s("/h")),
        Some(PathBuf::from("/h/.cache/kiln"))
    );
    assert_eq!(cache_dir_from(None, None, None), None);
}

#[test]
fn cache_keys_follow_the_checksum_or_the_url() {
    let url: Url = "http://127.0.0.1/dir/base.qcow2?x=1".parse().unwrap();
    let digest = Digest {
        algorithm: Algorithm::Sha512,
        hex: "ab".repeat(64),
    };
    assert_eq!(
        cache_key(&url, "base.qcow2", Some(&digest)),
        format!("sha512-{}.qcow2", "ab".repeat(64))
    );
    let by_url = cache_key(&url, "base.qcow2", None);
    assert_eq!(
        by_url,
        format!("url-{}.qcow2", sha256(url.as_str().as_bytes()))
    );
    let other: Url = "http://127.0.0.1/other/base.qcow2".parse().unwrap();
    assert_ne!(cache_key(&other, "base.qcow2", None), by_url);
    assert_eq!(cache_key(&url, "noext", None).matches('.').count(), 0);
}

#[tokio::test]
async fn downloads_once_then_finds_the_file_in_the_cache_without_the_network() {
    let data = content(3 << 20);
    let server = PythonServer::serving(&[("base.img", &data)]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("base.img");
    let checksum = digest_of(&data);

    let (sink, mut rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let path = fetcher
        .find(std::slice::from_ref(&url), &checksum)
        .await
        .unwrap();
    assert_eq!(
        path,
        cache
            .path()
            .join(format!("iso/sha256-{}.img", sha256(&data)))
    );
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let first = drain(&mut rx);
    assert!(
        messages(&first, Level::Info)
            .iter()
            .any(|m| m.contains("downloading") && m.contains(&url)),
        "{first:?}"
    );
    let progress: Vec<(u64, Option<u64>)> = first
        .iter()
        .filter_map(|e| match e {
            EventKind::Progress { done, total, .. } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    let len = data.len() as u64;
    assert!(!progress.is_empty(), "{first:?}");
    assert!(progress.iter().all(|(_, total)| *total == Some(len)));
    assert_eq!(progress.last(), Some(&(len, Some(len))));
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(entries(&cache.path().join("iso")).len(), 1);

    // The server is gone: the second build must not need it.
    drop(server);
    let (sink, mut rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    assert_eq!(fetcher.find(&[url], &checksum).await.unwrap(), path);
    let second = drain(&mut rx);
    assert!(
        messages(&second, Level::Info)
            .iter()
            .any(|m| m.contains("from the download cache")),
        "{second:?}"
    );
    assert!(!second
        .iter()
        .any(|e| matches!(e, EventKind::Progress { .. })));
}

#[tokio::test]
async fn a_checksum_mismatch_leaves_nothing_in_the_cache() {
    let server = PythonServer::serving(&[("base.img", &content(100_000))]);
    let cache = tempfile::tempdir().unwrap();
    let (sink, _rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let wrong = Checksum::parse(&"0".repeat(64)).unwrap();
    let url = server.url("base.img");
    let err = fetcher
        .find(std::slice::from_ref(&url), &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.tried.len(), 1);
    assert_eq!(err.tried[0].0, url);
    assert!(err.tried[0].1.contains("expects"), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(entries(&cache.path().join("iso")), Vec::<String>::new());
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let data = content(200_000);
    let server = FakeServer::start(vec![
        Reply::Status(503),
        Reply::Cut {
            body: data.clone(),
            after: 50_000,
        },
        Reply::Body(data.clone()),
    ])
    .await;
    let cache = tempfile::tempdir().unwrap();
    let (sink, mut rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let path = fetcher
        .find(&[server.url("base.qcow2")], &digest_of(&data))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(server.requests().len(), 3);
    let warnings = messages(&drain(&mut rx), Level::Warn);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("503"), "{warnings:?}");
    assert!(warnings[1].contains("body"), "{warnings:?}");
    assert_eq!(entries(&cache.path().join("iso")).len(), 1);
}

#[tokio::test]
async fn retries_end_and_client_errors_are_not_retried() {
    let server = FakeServer::start(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
    ])
    .await;
    let cache = tempfile::tempdir().unwrap();
    let (sink, _rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let data = content(10);
    let err = fetcher
        .find(&[server.url("busy.img")], &digest_of(&data))
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), QUICK.attempts as usize);
    assert!(err.tried[0].1.contains("503"), "{err}");

    let server = FakeServer::start(vec![Reply::Status(404), Reply::Body(data.clone())]).await;
    let err = fetcher
        .find(&[server.url("gone.img")], &digest_of(&data))
        .await
        .unwrap_err();
    assert_eq!(server.requests(), ["/gone.img"]);
    assert!(err.tried[0].1.contains("404"), "{err}");
}

#[tokio::test]
async fn the_next_url_is_tried_and_the_error_names_every_url() {
    let data = content(50_000);
    let real = PythonServer::serving(&[("base.img", &data)]);
    let fake = FakeServer::start(vec![Reply::Status(404)]).await;
    let cache = tempfile::tempdir().unwrap();
    let (sink, mut rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let checksum = digest_of(&data);

    let urls = [fake.url("missing.img"), real.url("base.img")];
    let path = fetcher.find(&urls, &checksum).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(fake.requests(), ["/missing.img"]);
    let warnings = messages(&drain(&mut rx), Level::Warn);
    assert!(
        warnings.len() == 1 && warnings[0].contains("404") && warnings[0].contains(&urls[0]),
        "{warnings:?}"
    );

    let missing = real.dir().join("nothing-here.img");
    let urls = [
        fake.url("missing.img"),
        missing.display().to_string(),
        "ftp://127.0.0.1/base.img".to_string(),
    ];
    // Another digest, so that the cache entry just made does not answer.
    let err = fetcher.find(&urls, &digest_of(b"other")).await.unwrap_err();
    let reasons: Vec<&str> = err.tried.iter().map(|(_, why)| why.as_str()).collect();
    assert_eq!(err.tried.len(), 3, "{err}");
    assert!(reasons[0].contains("404"), "{err}");
    assert!(reasons[1].contains("no such file"), "{err}");
    assert!(reasons[2].contains("unsupported URL scheme"), "{err}");
    for url in &urls {
        assert!(err.to_string().contains(url.as_str()), "{err}");
    }
}

#[tokio::test]
async fn a_sums_file_over_http_names_the_digest() {
    let data = content(70_000);
    let sums = format!(
        "{}  other.img\n{} *base.img\n",
        "1".repeat(64),
        sha256(&data)
    );
    let server = PythonServer::serving(&[("base.img", &data), ("SHA256SUMS", sums.as_bytes())]);
    let cache = tempfile::tempdir().unwrap();
    let (sink, _rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let checksum = Checksum::parse(&format!("file:{}", server.url("SHA256SUMS"))).unwrap();
    let path = fetcher
        .find(&[server.url("base.img")], &checksum)
        .await
        .unwrap();
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("sha256-{}.img", sha256(&data))
    );

    std::fs::write(server.dir().join("unlisted.img"), &data).unwrap();
    let err = fetcher
        .find(&[server.url("unlisted.img")], &checksum)
        .await
        .unwrap_err();
    assert!(
        err.tried[0].1.contains("has no line for `unlisted.img`"),
        "{err}"
    );

    let absent = Checksum::parse(&format!("file:{}", server.url("NOSUMS"))).unwrap();
    let err = fetcher
        .find(&[server.url("base.img")], &absent)
        .await
        .unwrap_err();
    assert!(
        err.tried[0].1.contains("cannot fetch the checksum file"),
        "{err}"
    );
    assert!(err.tried[0].1.contains("404"), "{err}");
}

#[tokio::test]
async fn a_dropped_download_leaves_no_temporary_file() {
    let data = content(1 << 20);
    let server = FakeServer::start(vec![Reply::Stall {
        body: data.clone(),
        after: 64 << 10,
    }])
    .await;
    let cache = tempfile::tempdir().unwrap();
    let iso = cache.path().join("iso");
    let (sink, mut rx) = events();
    let fetcher = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let urls = [server.url("stall.img")];
    let checksum = digest_of(&data);
    // Boxed, so that dropping it drops the future itself (as the runner does on Ctrl-C).
    let mut find = Box::pin(fetcher.find(&urls, &checksum));
    // Run the download until it has written something, as a build would be when cancelled.
    let progressed = async {
        while let Some(event) = rx.recv().await {
            if matches!(event.kind, EventKind::Progress { done, .. } if done > 0) {
                return;
            }
        }
    };
    tokio::select! {
        r = &mut find => panic!("the stalled download ended: {r:?}"),
        _ = progressed => {}
    }
    let part = entries(&iso);
    assert!(
        part.len() == 1 && part[0].ends_with(".part"),
        "expected a partial download in the cache: {part:?}"
    );
    drop(find);
    assert_eq!(entries(&iso), Vec::<String>::new());
}

#[tokio::test]
async fn local_files_are_verified_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(1000);
    let disk = dir.path().join("base.qcow2");
    std::fs::write(&disk, &data).unwrap();
    let cache = dir.path().join("cache");
    let (sink, _rx) = events();
    let fetcher = Fetcher::new(Some(cache.clone()), QUICK, &sink).unwrap();
    let file_url = format!("file://{}", disk.display());
    assert_eq!(
        fetcher.find(&[file_url], &digest_of(&data)).await.unwrap(),
        disk
    );
    let sums = dir.path().join("SHA256SUMS");
    std::fs::write(&sums, format!("{}  base.qcow2\n", sha256(&data))).unwrap();
    let by_sums = Checksum::parse(&format!("file:{}", sums.display())).unwrap();
    let local = [disk.display().to_string()];
    assert_eq!(fetcher.find(&local, &by_sums).await.unwrap(), disk);
    let err = fetcher
        .find(&local, &digest_of(b"other"))
        .await
        .unwrap_err();
    assert!(err.tried[0].1.contains("expects"), "{err}");
    assert!(!cache.exists(), "a local source was copied into the cache");
}

#[tokio::test]
async fn two_builds_downloading_the_same_file_at_once_share_one_entry() {
    let data = content(2 << 20);
    let server = PythonServer::serving(&[("base.img", &data)]);
    let cache = tempfile::tempdir().unwrap();
    let (sink, mut rx) = events();
    let one = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let two = Fetcher::new(Some(cache.path().into()), QUICK, &sink).unwrap();
    let urls = [server.url("base.img")];
    let checksum = digest_of(&data);
    let (a, b) = tokio::join!(one.find(&urls, &checksum), two.find(&urls, &checksum));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    let started = messages(&drain(&mut rx), Level::Info)
        .iter()
        .filter(|m| m.starts_with("downloading"))
        .count();
    assert_eq!(started, 2, "both builds should have downloaded");
    assert_eq!(std::fs::read(&a).unwrap(), data);
    assert_eq!(entries(&cache.path().join("iso")).len(), 1);
}
