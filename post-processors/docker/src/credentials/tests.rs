//! Unit tests of the credential lookup, with credential helpers as small shell scripts on a
//! `PATH` given to the child only.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kiln_core::event::{EventSink, Redactor};
use kiln_core::runner::{BuildCtx, Cancel, OnError};

use serde_json::{json, Value};

use super::*;

/// Held while a test writes or runs a helper: a child forked by another test while a script
/// is still open for writing would make running it fail with "text file busy".
static HELPERS: Mutex<()> = Mutex::new(());

fn helpers_lock() -> MutexGuard<'static, ()> {
    HELPERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A temp dir with `config.json` and the helpers, first on the helpers' `PATH`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(config: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        Self { dir }
    }

    /// Writes `docker-credential-<name>`, a `sh` script with `body`.
    fn helper(&self, name: &str, body: &str) -> &Self {
        let path = self.dir.path().join(format!("docker-credential-{name}"));
        let _helpers = helpers_lock();
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// A helper that answers `get` with `user` and `secret`, and writes what it was asked for
    /// to `asked-<name>`.
    fn answering(&self, name: &str, user: &str, secret: &str) -> &Self {
        self.helper(
            name,
            &format!(
                r#"[ "$1" = get ] || exit 2
server=$(cat)
printf '%s' "$server" > "$(dirname "$0")/asked-{name}"
printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}' "$server""#
            ),
        )
    }

    fn asked(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(format!("asked-{name}"))).ok()
    }

    fn sources(&self) -> CredentialSources {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.dir.path().to_owned()).chain(std::env::split_paths(&inherited)),
        )
        .unwrap();
        CredentialSources {
            config: self.dir.path().join("config.json"),
            path: Some(path),
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    fn lookup(&self, registry: &str) -> Result<Option<Found>, FindCredentialsError> {
        let _helpers = helpers_lock();
        block_on(self.sources().lookup(registry))
    }

    /// A helper that writes its pid to `pid-<name>` and then sleeps instead of answering.
    fn sleeping(&self, name: &str) -> &Self {
        self.helper(
            name,
            &format!("echo $$ > \"$(dirname \"$0\")/pid-{name}\"\ncat >/dev/null\nexec sleep 60"),
        )
    }

    /// The pid `sleeping` helper `name` wrote, once it has.
    async fn helper_pid(&self, name: &str) -> i32 {
        let path = self.dir.path().join(format!("pid-{name}"));
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) if text.ends_with('\n') => return text.trim().parse().unwrap(),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// The user name and password found for `registry`.
    fn user_password(&self, registry: &str) -> (String, String) {
        let found = self.lookup(registry).unwrap().expect("credentials");
        (
            found.credentials.username.unwrap_or_default(),
            found.credentials.password.unwrap_or_default(),
        )
    }
}

/// Runs `future` on a runtime of its own (a helper is a `tokio` child process).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Whether process `pid` is gone (or a zombie: killed, not yet reaped), polling for up to 5 s.
async fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // `pid (comm) STATE ...`; comm may hold spaces.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(str::to_owned)
            });
        if state.as_deref().is_none_or(|s| s == "Z" || s == "X") {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn pair(user: &str, password: &str) -> (String, String) {
    (user.to_string(), password.to_string())
}

#[test]
fn cred_helpers_win_over_creds_store_and_auths() {
    let fixture = Fixture::new(json!({
        "credHelpers": { "registry.example.com": "test" },
        "credsStore": "store",
        "auths": { "registry.example.com": { "auth": b64("file:file") } }
    }));
    fixture
        .answering("test", "helper-user", "helper-pass")
        .answering("store", "store-user", "store-pass");
    let found = fixture.lookup("registry.example.com").unwrap().unwrap();
    assert_eq!(
        found.source,
        CredentialSource::Helper("docker-credential-test".into())
    );
    assert_eq!(found.credentials.username.as_deref(), Some("helper-user"));
    assert_eq!(found.credentials.password.as_deref(), Some("helper-pass"));
    assert_eq!(
        found.credentials.serveraddress.as_deref(),
        Some("registry.example.com")
    );
    assert_eq!(
        fixture.asked("test").as_deref(),
        Some("registry.example.com")
    );
    assert_eq!(fixture.asked("store"), None);
    // Another registry is not the helper's: the store answers it.
    assert_eq!(
        fixture.user_password("other.example.com"),
        pair("store-user", "store-pass")
    );
}

#[test]
fn creds_store_is_used_without_a_cred_helper_and_wins_over_auths() {
    let fixture = Fixture::new(json!({
        "credsStore": "test",
        "auths": {
            "https://index.docker.io/v1/": {},
            "127.0.0.1:5000": { "auth": b64("file:file") }
        }
    }));
    fixture.answering("test", "store-user", "store-pass");
    assert_eq!(
        fixture.user_password("127.0.0.1:5000"),
        pair("store-user", "store-pass")
    );
    // Docker Hub is asked for under its index address, as `docker login` stored it.
    assert_eq!(
        fixture.user_password("docker.io"),
        pair("store-user", "store-pass")
    );
    assert_eq!(
        fixture.asked("test").as_deref(),
        Some("https://index.docker.io/v1/")
    );
}

#[test]
fn a_helper_token_is_an_identity_token() {
    let fixture = Fixture::new(json!({ "credHelpers": { "registry.example.com": "test" } }));
    fixture.answering("test", "<token>", "refresh-token");
    let found = fixture.lookup("registry.example.com").unwrap().unwrap();
    assert_eq!(found.credentials.username, None);
    assert_eq!(found.credentials.password, None);
    assert_eq!(
        found.credentials.identitytoken.as_deref(),
        Some("refresh-token")
    );
}

#[test]
fn credentials_not_found_means_anonymous() {
    let fixture = Fixture::new(json!({
        "credsStore": "test",
        "auths": { "registry.example.com": { "auth": b64("file:file") } }
    }));
    fixture.helper(
        "test",
        "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1",
    );
    // As in the Docker CLI, the store answers for every registry; `auths` is not consulted.
    assert!(fixture.lookup("registry.example.com").unwrap().is_none());
}

#[test]
fn a_failing_helper_is_an_error_naming_it() {
    let fixture = Fixture::new(json!({ "credHelpers": { "registry.example.com": "test" } }));
    fixture.helper(
        "test",
        "cat >/dev/null\necho 'the keychain is locked'\nexit 3",
    );
    let err = fixture.lookup("registry.example.com").unwrap_err();
    assert!(
        matches!(err, FindCredentialsError::HelperFailed { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("`docker-credential-test`"), "{text}");
    assert!(text.contains("the keychain is locked"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
}

#[test]
fn a_missing_helper_is_an_error_naming_it() {
    let fixture = Fixture::new(json!({ "credsStore": "absent-for-kiln-tests" }));
    let text = fixture.lookup("docker.io").unwrap_err().to_string();
    assert!(
        text.contains("`docker-credential-absent-for-kiln-tests` is not on `PATH`"),
        "{text}"
    );
    assert!(text.contains("`credsStore`"), "{text}");
}

#[test]
fn helper_output_that_is_not_json_is_an_error_that_does_not_quote_it() {
    let fixture = Fixture::new(json!({ "credsStore": "test" }));
    fixture.helper("test", "cat >/dev/null\necho '\"hunter2\"'");
    let text = fixture.lookup("docker.io").unwrap_err().to_string();
    assert!(text.contains("`docker-credential-test`"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn auths_with_auth() {
    let fixture = Fixture::new(json!({
        "auths": {
            "https://index.docker.io/v1/": { "auth": b64("hub:secret") },
            "127.0.0.1:5000": { "auth": b64("user:pass:with:colons") },
            "both.example.com": { "auth": b64("auth:wins"), "username": "u", "password": "p" }
        }
    }));
    assert_eq!(
        fixture.user_password("127.0.0.1:5000"),
        pair("user", "pass:with:colons")
    );
    assert_eq!(fixture.user_password("docker.io"), pair("hub", "secret"));
    assert_eq!(
        fixture.user_password("index.docker.io"),
        pair("hub", "secret")
    );
    assert_eq!(
        fixture.user_password("both.example.com"),
        pair("auth", "wins")
    );
    let found = fixture.lookup("docker.io").unwrap().unwrap();
    assert_eq!(found.source, CredentialSource::ConfigFile);
    assert_eq!(
        found.credentials.serveraddress.as_deref(),
        Some("https://index.docker.io/v1/")
    );
    assert!(fixture.lookup("other.example.com").unwrap().is_none());
}

#[test]
fn auths_with_username_and_password() {
    let fixture = Fixture::new(json!({
        "auths": { "registry.example.com": { "username": "ci", "password": "pw" } }
    }));
    assert_eq!(
        fixture.user_password("registry.example.com"),
        pair("ci", "pw")
    );
}

#[test]
fn auths_with_identity_token() {
    let fixture = Fixture::new(json!({
        "auths": { "registry.example.com": { "identitytoken": "refresh-token" } }
    }));
    let found = fixture.lookup("registry.example.com").unwrap().unwrap();
    assert_eq!(
        found.credentials.identitytoken.as_deref(),
        Some("refresh-token")
    );
    assert_eq!(found.credentials.username, None);
}

#[test]
fn keys_naming_the_host_match() {
    for key in [
        "https://registry.example.com",
        "http://registry.example.com",
        "registry.example.com/v1/",
        "https://registry.example.com/v2/",
    ] {
        let fixture = Fixture::new(json!({
            "auths": {
                "https://registry.example.com.evil": { "auth": b64("wrong:wrong") },
                key: { "auth": b64("user:pass") }
            }
        }));
        assert_eq!(
            fixture.user_password("registry.example.com"),
            pair("user", "pass"),
            "{key}"
        );
    }
    // The exact key wins over one that only names the host.
    let fixture = Fixture::new(json!({
        "auths": {
            "https://registry.example.com": { "auth": b64("host:host") },
            "registry.example.com": { "auth": b64("exact:exact") }
        }
    }));
    assert_eq!(
        fixture.user_password("registry.example.com"),
        pair("exact", "exact")
    );
    // And for `credHelpers` too.
    let fixture = Fixture::new(json!({
        "credHelpers": { "https://registry.example.com": "test" }
    }));
    fixture.answering("test", "helper-user", "helper-pass");
    assert_eq!(
        fixture.user_password("registry.example.com"),
        pair("helper-user", "helper-pass")
    );
}

#[test]
fn no_config_file_means_anonymous_and_a_broken_one_is_an_error() {
    let fixture = Fixture::new(json!({}));
    let missing = CredentialSources {
        config: fixture.dir.path().join("absent.json"),
        path: None,
        helper_timeout: HELPER_TIMEOUT,
    };
    assert!(block_on(missing.lookup("docker.io")).unwrap().is_none());
    assert!(fixture.lookup("docker.io").unwrap().is_none());

    std::fs::write(
        fixture.dir.path().join("config.json"),
        r#"{"auths": "c2VjcmV0"}"#,
    )
    .unwrap();
    let text = fixture.lookup("docker.io").unwrap_err().to_string();
    assert!(text.contains("config.json"), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");

    std::fs::write(
        fixture.dir.path().join("config.json"),
        json!({ "auths": { "docker.io": { "auth": "not base64!" } } }).to_string(),
    )
    .unwrap();
    let text = fixture.lookup("docker.io").unwrap_err().to_string();
    assert!(text.contains("`auths.\"docker.io\"`"), "{text}");
    assert!(!text.contains("not base64!"), "{text}");
}

#[test]
fn found_credentials_do_not_debug_print_secrets() {
    let found = Found {
        credentials: DockerCredentials {
            username: Some("ci".into()),
            password: Some("hunter2".into()),
            identitytoken: Some("token".into()),
            ..DockerCredentials::default()
        },
        source: CredentialSource::ConfigFile,
    };
    let text = format!("{found:?}");
    assert!(text.contains("ci"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("token"),
        "{text}"
    );
}

#[test]
fn a_helper_that_does_not_answer_in_time_is_killed_and_named_with_the_registry() {
    let fixture = Fixture::new(json!({ "credsStore": "slow" }));
    fixture.sleeping("slow");
    let sources = CredentialSources {
        helper_timeout: Duration::from_millis(500),
        ..fixture.sources()
    };
    let _helpers = helpers_lock();
    let started = Instant::now();
    let (err, pid) = block_on(async {
        let err = sources.lookup("127.0.0.1:5000").await.unwrap_err();
        (err, fixture.helper_pid("slow").await)
    });
    let took = started.elapsed();
    assert!(
        matches!(err, FindCredentialsError::HelperTimeout { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("`docker-credential-slow`"), "{text}");
    assert!(text.contains("`127.0.0.1:5000`"), "{text}");
    assert!(text.contains("500ms"), "{text}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(block_on(gone(pid)), "the helper {pid} still runs");
}

/// A build context whose cancellation the test controls.
fn build_ctx(cancel: Cancel) -> BuildCtx {
    let (sink, _rx) = EventSink::channel(uuid::Uuid::new_v4(), Redactor::default());
    BuildCtx {
        run_id: sink.run_id(),
        build_name: "push.docker.test".to_string(),
        source_type: "docker".to_string(),
        source_name: "test".to_string(),
        events: sink,
        cancel,
        on_error: OnError::Cleanup,
        asker: None,
        template_dir: PathBuf::from("."),
        force: false,
    }
}

#[test]
fn a_cancelled_build_does_not_wait_for_the_helper_and_kills_it() {
    let fixture = Fixture::new(json!({ "credHelpers": { "registry.example.com": "slow" } }));
    fixture.sleeping("slow");
    // The default deadline: only the cancellation can end the lookup within the test's limits.
    let sources = fixture.sources();
    let cancel = Cancel::new();
    let ctx = build_ctx(cancel.clone());
    let _helpers = helpers_lock();
    block_on(async {
        let lookup = crate::config_credentials(&ctx, &sources, "registry.example.com");
        let cancel_once_running = async {
            let pid = fixture.helper_pid("slow").await;
            cancel.cancel.cancel();
            pid
        };
        let started = Instant::now();
        let (result, pid) = tokio::join!(lookup, cancel_once_running);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let text = result.unwrap_err().to_string();
        assert!(text.contains("cancelled"), "{text}");
        assert!(text.contains("`registry.example.com`"), "{text}");
        assert!(gone(pid).await, "the helper {pid} still runs");
    });
}

#[test]
fn a_dropped_lookup_kills_its_helper() {
    let fixture = Fixture::new(json!({ "credsStore": "slow" }));
    fixture.sleeping("slow");
    let sources = fixture.sources();
    let _helpers = helpers_lock();
    block_on(async {
        let mut lookup = Box::pin(sources.lookup("docker.io"));
        let pid = tokio::select! {
            _ = &mut lookup => panic!("a sleeping helper answered"),
            pid = fixture.helper_pid("slow") => pid,
        };
        drop(lookup);
        assert!(gone(pid).await, "the helper {pid} still runs");
    });
}
