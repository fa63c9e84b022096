//! The build's HTTP server for installers (`http_directory` / `http_content`): hyper on a
//! loopback port, which the guest reaches through user-mode networking at `10.0.2.2:PORT`.
//! Files are served by tower-http's `ServeDir` (path sanitizing, ranges, content types); every
//! request is reported as a debug event.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kiln_core::event::{EventSink, Level};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// The address the guest sees the host at under user-mode networking.
pub const GUEST_HOST_IP: &str = "10.0.2.2";

/// What the server serves.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub directory: Option<PathBuf>,
    /// URL path (with a leading `/`) → content.
    pub content: BTreeMap<String, String>,
    pub bind: IpAddr,
    /// Inclusive port range to choose from; `(0, 0)`: any free port.
    pub ports: (u16, u16),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no free port between {0} and {1} on {2}")]
    NoPort(u16, u16, IpAddr),
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("`http_directory` `{}` is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// A running server; dropping it (or [`HttpServer::stop`]) stops it and every connection.
pub struct HttpServer {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl HttpServer {
    pub async fn start(spec: &HttpSpec, events: &EventSink) -> Result<HttpServer, HttpError> {
        if let Some(dir) = &spec.directory {
            if !dir.is_dir() {
                return Err(HttpError::NotADirectory(dir.clone()));
            }
        }
        let listener = bind(spec).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| HttpError::Bind(SocketAddr::new(spec.bind, 0), e))?;
        let content: Arc<BTreeMap<String, Bytes>> = Arc::new(
            spec.content
                .iter()
                .map(|(k, v)| (k.clone(), Bytes::from(v.clone())))
                .collect(),
        );
        let dir = spec.directory.clone().map(ServeDir::new);
        let events = events.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let content = content.clone();
                let dir = dir.clone();
                let events = events.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let content = content.clone();
                        let dir = dir.clone();
                        let events = events.clone();
                        async move {
                            let line = format!("http: {} {}", req.method(), req.uri().path());
                            let response = respond(req, &content, dir).await;
                            events.message(
                                Level::Debug,
                                format!("{line} {}", response.status().as_u16()),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(HttpServer { addr, tasks })
    }

    /// Stops serving and closes every connection.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn bind(spec: &HttpSpec) -> Result<TcpListener, HttpError> {
    let (min, max) = spec.ports;
    if (min, max) == (0, 0) {
        let addr = SocketAddr::new(spec.bind, 0);
        return TcpListener::bind(addr)
            .await
            .map_err(|e| HttpError::Bind(addr, e));
    }
    for port in min..=max {
        if let Ok(listener) = TcpListener::bind(SocketAddr::new(spec.bind, port)).await {
            return Ok(listener);
        }
    }
    Err(HttpError::NoPort(min, max, spec.bind))
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(
        Full::new(bytes)
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    content: &BTreeMap<String, Bytes>,
    dir: Option<ServeDir>,
) -> Response<Body> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return full(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
    }
    if let Some(bytes) = content.get(req.uri().path()) {
        let mut response = full(StatusCode::OK, bytes.clone());
        if req.method() == hyper::Method::HEAD {
            *response.body_mut() = Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync();
        }
        return response;
    }
    match dir {
        Some(dir) => match dir.oneshot(req).await {
            Ok(response) => response.map(|b| b.boxed_unsync()),
            Err(e) => match e {},
        },
        None => full(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::event::Redactor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_content_and_a_directory_and_nothing_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/preseed.cfg"), "from the directory\n").unwrap();
        std::fs::write(dir.path().join("secret"), "outside\n").unwrap();
        let (events, mut rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
        let spec = HttpSpec {
            directory: Some(dir.path().join("www")),
            content: [("/ks.cfg".to_string(), "from content\n".to_string())].into(),
            bind: "127.0.0.1".parse().unwrap(),
            ports: (0, 0),
        };
        let server = HttpServer::start(&spec, &events).await.unwrap();
        let addr = server.addr;
        let file = get(addr, "/preseed.cfg").await;
        assert!(file.starts_with("HTTP/1.1 200 OK"), "{file}");
        assert!(file.ends_with("from the directory\n"), "{file}");
        let content = get(addr, "/ks.cfg").await;
        assert!(content.starts_with("HTTP/1.1 200 OK"), "{content}");
        assert!(content.ends_with("from content\n"), "{content}");
        let escape = get(addr, "/../secret").await;
        assert!(!escape.contains("outside"), "{escape}");
        assert!(get(addr, "/missing").await.starts_with("HTTP/1.1 404"));
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(format!("{:?}", event.kind));
        }
        assert!(
            seen.iter().any(|e| e.contains("http: GET /ks.cfg 200")),
            "{seen:?}"
        );
        server.stop().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after stop"
        );
    }

    #[tokio::test]
    async fn a_port_range_is_honoured() {
        let (events, _rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let spec = HttpSpec {
            directory: None,
            content: BTreeMap::new(),
            bind: "127.0.0.1".parse().unwrap(),
            ports: (port, port),
        };
        assert!(matches!(
            HttpServer::start(&spec, &events).await,
            Err(HttpError::NoPort(..))
        ));
        drop(taken);
        let server = HttpServer::start(&spec, &events).await.unwrap();
        assert_eq!(server.addr.port(), port);
    }
}
