//! Processes, files, ports and time for tests that spawn real binaries or
//! wait for something: shared by `tests/support` and the Envoy end-to-end
//! harness (`tests/e2e/mod.rs` includes this file by path), so it uses nothing
//! else of either.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any `eventually` condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Logs to the test output when RUST_LOG is set (e.g. `RUST_LOG=stsgate=debug`).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    stsgate::install_crypto_provider();
}

/// Polls `cond` every 10 ms until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, WAIT, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually_some<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A scratch directory, removed on drop; kept (and its path printed) when the
/// test fails, so that configurations and logs can be read.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "stsgate-{label}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` in the directory (write-then-rename, so a concurrent
    /// reader never sees half a file) and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write temp file");
        std::fs::rename(&tmp, &p).expect("rename temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A spawned process (the real `stsgate`, Envoy), stopped (SIGTERM, then
/// SIGKILL after 3 s) and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard { name: name.to_owned(), child: Some(child) }
    }

    /// The process id, while it has not been killed through this guard.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_else(|| panic!("{} was killed", self.name))
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (a name such as `TERM` or `HUP`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {} failed", self.name);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        if c.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// A loopback port that was free a moment ago, for a spawned binary's listeners.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// `stsgate explain --config CFG ARGS...`: its exit code (-1 if killed) and
/// the JSON it prints.
pub async fn run_explain<S: AsRef<std::ffi::OsStr>>(cfg: &Path, args: &[S]) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stsgate"));
    cmd.arg("explain").arg("--config").arg(cfg).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run stsgate explain")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("explain prints JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}
