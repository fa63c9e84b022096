//! Finding the base disk among `iso_url`/`iso_urls`: local paths and `file://` URLs are used in
//! place; `http(s)://` URLs are downloaded (with retries and progress events) into a cache keyed
//! by the checksum, so that a later build finds the file without touching the network.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_core::event::{EventKind, EventSink, Level};
use kiln_core::runner::error_chain;
use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt;

use crate::checksum::{self, Algorithm, Checksum, Digest, Hasher, VerifyError};

/// Environment variable naming the download cache directory.
pub const CACHE_DIR_ENV: &str = "KILN_CACHE_DIR";

/// A download reports its progress at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Where a source or a SUMS file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path, or a `file://` URL.
    Local(PathBuf),
    /// An `http://` or `https://` URL.
    Remote(Url),
}

impl Location {
    /// `None` for a URL of another scheme.
    pub fn parse(text: &str) -> Option<Location> {
        if let Some(path) = text.strip_prefix("file://") {
            return Some(Location::Local(PathBuf::from(path)));
        }
        match text.split_once("://") {
            None => Some(Location::Local(PathBuf::from(text))),
            Some((scheme, _))
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
            {
                Url::parse(text).ok().map(Location::Remote)
            }
            Some(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => path.display().fmt(f),
            Location::Remote(url) => url.fmt(f),
        }
    }
}

/// The download cache directory: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `$HOME/.cache/kiln` (empty variables count as unset).
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    cache_dir_from(var(CACHE_DIR_ENV), var("XDG_CACHE_HOME"), var("HOME"))
}

fn cache_dir_from(
    kiln: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    kiln.map(PathBuf::from)
        .or_else(|| xdg.map(|dir| PathBuf::from(dir).join("kiln")))
        .or_else(|| home.map(|dir| PathBuf::from(dir).join(".cache/kiln")))
}

/// How transient failures (connection errors, timeouts, 5xx, a cut body) are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries per URL, the first included.
    pub attempts: u32,
    /// The wait before the second try; it doubles before each further try.
    pub first_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_delay: Duration::from_secs(1),
        }
    }
}

/// Why one URL gave no usable source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no such file")]
    NotFound,
    #[error("unsupported URL scheme (use a path, `file://`, `http://` or `https://`)")]
    Scheme,
    #[error("no download cache directory: set {CACHE_DIR_ENV} (or HOME)")]
    NoCacheDir,
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the server answered {0}")]
    Status(StatusCode),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("the download ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("cannot fetch the checksum file `{sums}`")]
    Sums {
        sums: Url,
        #[source]
        source: Box<FetchError>,
    },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot {what} `{}`", path.display())]
    Fs {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether trying the same URL again may help.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Http(e) => {
                e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
            }
            FetchError::Status(status) => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            FetchError::Truncated { .. } => true,
            _ => false,
        }
    }
}

fn fs_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Fs {
        what,
        path: path.to_owned(),
        source,
    }
}

/// No URL gave a usable source: each URL tried with the last reason it failed for.
#[derive(Debug, thiserror::Error)]
#[error("no usable base disk: {}", .tried.iter().map(|(url, why)| format!("`{url}`: {why}")).collect::<Vec<_>>().join("; "))]
pub struct NoSourceError {
    pub tried: Vec<(String, String)>,
}

/// Finds, checks and if need be downloads the base disk.
pub struct Fetcher<'a> {
    client: reqwest::Client,
    cache_dir: Option<PathBuf>,
    retry: Retry,
    events: &'a EventSink,
}

impl<'a> Fetcher<'a> {
    /// A fetcher downloading into `cache_dir` (needed only for remote URLs).
    pub fn new(
        cache_dir: Option<PathBuf>,
        retry: Retry,
        events: &'a EventSink,
    ) -> Result<Fetcher<'a>, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetchError::Client)?;
        Ok(Fetcher {
            client,
            cache_dir,
            retry,
            events,
        })
    }

    /// The first of `urls` that gives a file matching `checksum`, as an absolute path.
    pub async fn find(
        &self,
        urls: &[String],
        checksum: &Checksum,
    ) -> Result<PathBuf, NoSourceError> {
        let mut sums = None;
        let mut tried = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let found = match Location::parse(url) {
                Some(Location::Local(path)) => self.local(&path, checksum, &mut sums).await,
                Some(Location::Remote(url)) => self.remote(&url, checksum, &mut sums).await,
                None => Err(FetchError::Scheme),
            };
            match found {
                Ok(path) => return Ok(path),
                Err(e) => {
                    let why = error_chain(&e).join(": ");
                    if i + 1 < urls.len() {
                        self.events
                            .message(Level::Warn, format!("`{url}`: {why}; trying the next URL"));
                    }
                    tried.push((url.clone(), why));
                }
            }
        }
        Err(NoSourceError { tried })
    }

    /// A local file is used where it is, after checking its digest.
    async fn local(
        &self,
        path: &Path,
        checksum: &Checksum,
        sums: &mut Option<String>,
    ) -> Result<PathBuf, FetchError> {
        if !path.is_file() {
            return Err(FetchError::NotFound);
        }
        let path = std::path::absolute(path).map_err(fs_err("resolve", path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(expected) = self.expected(checksum, &name, sums).await? else {
            return Ok(path);
        };
        self.events
            .message(Level::Info, format!("verifying `{}`", path.display()));
        let hashed = path.clone();
        let got =
            tokio::task::spawn_blocking(move || checksum::hash_file(&hashed, expected.algorithm))
                .await
                .expect("hashing does not panic")
                .map_err(fs_err("read", &path))?;
        expected.check(got, path.display().to_string())?;
        Ok(path)
    }

    /// A remote file comes from the cache, or is downloaded into it.
    async fn remote(
        &self,
        url: &Url,
        checksum: &Checksum,
        sums: &mut Option<String>,
    ) -> Result<PathBuf, FetchError> {
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default()
            .to_string();
        let expected = self.expected(checksum, &name, sums).await?;
        let dir = self.cache_dir.as_ref().ok_or(FetchError::NoCacheDir)?;
        let dir = std::path::absolute(dir.join("iso")).map_err(fs_err("resolve", dir))?;
        let path = dir.join(cache_key(url, &name, expected.as_ref()));
        if path.is_file() {
            self.events.message(
                Level::Info,
                format!(
                    "using `{}` from the download cache for `{url}`",
                    path.display()
                ),
            );
            return Ok(path);
        }
        std::fs::create_dir_all(&dir).map_err(fs_err("create", &dir))?;
        self.events.message(
            Level::Info,
            format!("downloading `{url}` into `{}`", path.display()),
        );
        self.retrying(url, || self.download(url, &name, &path, expected.as_ref()))
            .await?;
        Ok(path)
    }

    /// The digest the file called `name` must have; `None` for `iso_checksum = "none"`. A SUMS
    /// file is read once per build (remote ones are fetched again by every build, as they change).
    async fn expected(
        &self,
        checksum: &Checksum,
        name: &str,
        sums: &mut Option<String>,
    ) -> Result<Option<Digest>, FetchError> {
        let location = match checksum {
            Checksum::None => return Ok(None),
            Checksum::Digest(digest) => return Ok(Some(digest.clone())),
            Checksum::SumsFile(location) => location,
        };
        if sums.is_none() {
            *sums = Some(self.read_sums(location).await?);
        }
        let text = sums.as_deref().expect("read above");
        let digest = checksum::listed_digest(text, name).ok_or_else(|| VerifyError::NotListed {
            sums: location.to_string(),
            name: name.to_string(),
        })?;
        Ok(Some(digest))
    }

    async fn read_sums(&self, location: &Location) -> Result<String, FetchError> {
        match location {
            Location::Local(path) => std::fs::read_to_string(path).map_err(fs_err("read", path)),
            Location::Remote(url) => {
                self.events
                    .message(Level::Info, format!("fetching checksum file `{url}`"));
                self.retrying(url, || async { Ok(self.get(url).await?.text().await?) })
                    .await
                    .map_err(|e| FetchError::Sums {
                        sums: url.clone(),
                        source: Box::new(e),
                    })
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been tried `retry.attempts`
    /// times, waiting longer before each try.
    async fn retrying<T, F, Fut>(&self, url: &Url, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, FetchError>>,
    {
        let mut delay = self.retry.first_delay;
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && tries < self.retry.attempts => {
                    tries += 1;
                    self.events.message(
                        Level::Warn,
                        format!(
                            "`{url}`: {}; trying again in {delay:?} (try {tries} of {})",
                            error_chain(&e).join(": "),
                            self.retry.attempts
                        ),
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                result => return result,
            }
        }
    }

    async fn get(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        let response = self.client.get(url.clone()).send().await?;
        match response.status() {
            status if status.is_success() => Ok(response),
            status => Err(FetchError::Status(status)),
        }
    }

    /// One try: streams `url` into a temporary file beside `dest`, checks it and renames it to
    /// `dest`. The temporary file is removed whatever happens before the rename: an error, a
    /// mismatch, or this future being dropped (a cancelled build).
    async fn download(
        &self,
        url: &Url,
        name: &str,
        dest: &Path,
        expected: Option<&Digest>,
    ) -> Result<(), FetchError> {
        let mut response = self.get(url).await?;
        let total = response.content_length();
        let dir = dest.parent().expect("cache entries are in a directory");
        let prefix = format!(
            ".{}.",
            dest.file_name().unwrap_or_default().to_string_lossy()
        );
        let part = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(fs_err("create a file in", dir))?;
        let std_file = part.as_file().try_clone();
        let mut file = tokio::fs::File::from_std(std_file.map_err(fs_err("open", part.path()))?);
        let mut hasher = expected.map(|d| Hasher::new(d.algorithm));
        let what = format!("download {name}");
        let mut done = 0u64;
        let mut reported: Option<Instant> = None;
        while let Some(chunk) = response.chunk().await? {
            // A chunk hashes in microseconds; hashing as it arrives saves reading the file again.
            if let Some(hasher) = &mut hasher {
                hasher.update(&chunk);
            }
            file.write_all(&chunk)
                .await
                .map_err(fs_err("write", part.path()))?;
            done += chunk.len() as u64;
            if reported.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) {
                self.progress(&what, done, total);
                reported = Some(Instant::now());
            }
        }
        if let Some(expected) = total.filter(|&total| done < total) {
            return Err(FetchError::Truncated {
                got: done,
                expected,
            });
        }
        file.flush().await.map_err(fs_err("write", part.path()))?;
        file.sync_all()
            .await
            .map_err(fs_err("write", part.path()))?;
        if let (Some(expected), Some(hasher)) = (expected, hasher) {
            expected.check(hasher.finish(), url.to_string())?;
        }
        // Renaming over an entry a concurrent build has just written is fine: same content.
        part.persist(dest).map_err(|e| FetchError::Fs {
            what: "rename a download to",
            path: dest.to_owned(),
            source: e.error,
        })?;
        self.progress(&what, done, Some(done));
        Ok(())
    }

    fn progress(&self, what: &str, done: u64, total: Option<u64>) {
        self.events.emit(EventKind::Progress {
            what: what.to_string(),
            done,
            total,
        });
    }
}

/// The file name of a download in the cache: `ALGORITHM-HEX.EXT` after the checksum, or, with
/// `iso_checksum = "none"`, `url-HEX.EXT` after the sha256 of the URL. EXT is the extension of the
/// URL's file name.
fn cache_key(url: &Url, name: &str, expected: Option<&Digest>) -> String {
    let stem = match expected {
        Some(d) => format!("{}-{}", d.algorithm.name(), d.hex),
        None => {
            let mut hasher = Hasher::new(Algorithm::Sha256);
            hasher.update(url.as_str().as_bytes());
            format!("url-{}", hasher.finish())
        }
    };
    match name.rsplit_once('.') {
        Some((_, ext))
            if !ext.is_empty()
                && ext.len() <= 8
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("{stem}.{ext}")
        }
        _ => stem,
    }
}

#[cfg(test)]
mod tests;
