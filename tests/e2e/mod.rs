//! Shared harness of the end-to-end tests that drive real binaries: stsgate
//! (`CARGO_BIN_EXE_stsgate`), Envoy 1.40 and grpcurl 1.8.6 from `.tools/bin`
//! (installed by `scripts/install-tools.sh`), plus an in-process echo upstream.
//!
//! Include with `#[path = "e2e/mod.rs"] mod e2e;`. Every child process is
//! killed when its guard drops; every wait polls with a deadline. Scratch
//! directories, child processes, free ports and polling are the ones of
//! `tests/support` (its `process.rs`, included here by path).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

#[path = "../support/process.rs"]
mod process;
// Each e2e test binary uses part of it.
#[allow(unused_imports)]
pub use process::{ChildGuard, TempDir, eventually_some, free_port};

/// How long any single thing (a process starting, a log line appearing) may take.
pub const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------
// Tools and files

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pinned tool from `.tools/bin`; a missing tool is a failure, never a skip.
pub fn tool(name: &str) -> PathBuf {
    let path = repo_root().join(".tools").join("bin").join(name);
    if !path.is_file() {
        panic!(
            "{name} not found at {}: run scripts/install-tools.sh (it installs the pinned Envoy and grpcurl into .tools/)",
            path.display()
        );
    }
    path
}

pub fn envoy_bin() -> PathBuf {
    tool("envoy")
}

pub fn grpcurl_bin() -> PathBuf {
    tool("grpcurl")
}

pub fn stsgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stsgate"))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn http_client() -> reqwest::Client {
    // reqwest is built with rustls but no default crypto provider.
    stsgate::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

// ---------------------------------------------------------------------------
// Child processes

fn log_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// stsgate

/// The built-in dev IdP's default audience in the test configuration.
pub const IDP_AUDIENCE: &str = "stsgate-e2e";

/// stsgate's test configuration: the built-in dev IdP as the only trusted
/// issuer, an ephemeral ES256 key, and rules for `orders` and `billing` only
/// (any other audience is refused).
pub fn stsgate_config(grpc_port: u16, http_port: u16) -> String {
    format!(
        r#"listen:
  grpc: 127.0.0.1:{grpc_port}
  http: 127.0.0.1:{http_port}
  shutdown_grace: 1s
issuer: http://127.0.0.1:{http_port}
signing:
  keys:
    - kid: e2e-es256
      alg: ES256
      ephemeral: true
tokens:
  lifetime: 5m
trusted_issuers:
  # The dev IdP is served on the HTTP listener at http://{{http_addr}}{{path}}.
  - issuer: http://127.0.0.1:{http_port}/dev-idp
    discovery: true
    algorithms: [RS256]
    audiences: [{IDP_AUDIENCE}]
    leeway: 5s
    refresh_interval: 10s
    unknown_kid_refetch_interval: 1s
    fetch_timeout: 2s
dev_idp:
  path: /dev-idp
  audience: {IDP_AUDIENCE}
ext_authz:
  realm: stsgate-e2e
  dynamic_metadata: [decision, rule, sub, aud, actor, scope, jti]
rules:
  - name: orders
    match: {{ audiences: [orders] }}
    grant: {{ scopes: ["orders.read", "orders.write"], max_lifetime: 2m }}
  - name: billing
    match: {{ audiences: [billing] }}
    grant: {{ scopes: ["billing.*"] }}
"#
    )
}

/// A running `stsgate serve --config <file>`.
pub struct Stsgate {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    restarts: u32,
    child: Option<ChildGuard>,
}

impl Stsgate {
    /// Starts stsgate on fresh loopback ports (retrying if a port was taken in
    /// the meantime) and waits until it is ready.
    pub async fn start(dir: &TempDir) -> Stsgate {
        Stsgate::start_with(dir, stsgate_config).await
    }

    /// Like [`Stsgate::start`], with the configuration `config_of(grpc_port, http_port)`.
    pub async fn start_with(dir: &TempDir, config_of: fn(u16, u16) -> String) -> Stsgate {
        let mut last = String::new();
        for _ in 0..5 {
            let (grpc_port, http_port) = (free_port(), free_port());
            if grpc_port == http_port {
                continue;
            }
            let config = dir.join(&format!("stsgate-{grpc_port}.yaml"));
            std::fs::write(&config, config_of(grpc_port, http_port)).unwrap();
            let mut s = Stsgate {
                grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
                http: SocketAddr::from(([127, 0, 0, 1], http_port)),
                log: dir.join(&format!("stsgate-{grpc_port}.log")),
                config,
                restarts: 0,
                child: None,
            };
            match s.launch().await {
                Ok(()) => return s,
                Err(e) if e.contains("cannot listen") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("stsgate could not bind free ports: {last}");
    }

    /// Spawns the process (on this instance's ports) and waits for `/readyz`.
    async fn launch(&mut self) -> Result<(), String> {
        let log = if self.restarts == 0 {
            self.log.clone()
        } else {
            self.log.with_extension(format!("{}.log", self.restarts))
        };
        let mut guard = ChildGuard::spawn(
            "stsgate",
            Command::new(stsgate_bin())
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "stsgate=debug,info")
                .env_remove("STSGATE_CONFIG")
                .stdin(Stdio::null())
                .stdout(log_file(&log))
                .stderr(log_file(&log.with_extension("stderr.log"))),
        );
        self.log = log;
        let client = http_client();
        let url = format!("http://{}/readyz", self.http);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = guard.exited() {
                return Err(format!("stsgate exited with {status} before it was ready:\n{}", self.log_text()));
            }
            if let Ok(resp) = client.get(&url).timeout(Duration::from_secs(1)).send().await {
                if resp.status().is_success() && TcpStream::connect(self.grpc).is_ok() {
                    self.child = Some(guard);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("stsgate was not ready after {WAIT:?}:\n{}", self.log_text()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills the process (SIGKILL: no draining, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts it again on the same ports, with the same configuration.
    pub async fn restart(&mut self) {
        self.kill();
        self.restarts += 1;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.launch().await {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if e.contains("cannot listen") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// stsgate's own issuer (`iss` of minted tokens).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The built-in dev IdP's issuer.
    pub fn idp_issuer(&self) -> String {
        format!("http://{}/dev-idp", self.http)
    }

    pub fn log_text(&self) -> String {
        let err = read_lossy(&self.log.with_extension("stderr.log"));
        let out = read_lossy(&self.log);
        format!("--- stsgate stderr ---\n{}\n--- stsgate stdout ---\n{}", last_lines(&err, 40), last_lines(&out, 10))
    }

    /// A subject token from the dev IdP (`POST {http}/dev-idp/token`).
    pub async fn mint(&self, sub: &str, scope: &str) -> String {
        self.mint_with(&[("sub", sub), ("scope", scope)]).await
    }

    pub async fn mint_with(&self, form: &[(&str, &str)]) -> String {
        let url = format!("{}/token", self.idp_issuer());
        let resp = http_client().post(&url).form(form).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("POST {url}: non-JSON answer: {e}"));
        assert!(status.is_success(), "POST {url} answered {status}: {body}");
        body["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {body}")).to_owned()
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// JWT helpers

/// The decoded (unverified) header and payload of a compact JWT.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWT: {token}");
    let decode = |s: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(s).unwrap_or_else(|e| panic!("bad base64url in {token}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("bad JSON in {token}: {e}"))
    };
    (decode(parts[0]), decode(parts[1]))
}

pub fn jwt_claims(token: &str) -> Value {
    jwt_parts(token).1
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> &str {
    value.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer credential: {value}"))
}

// ---------------------------------------------------------------------------
// Echo upstream

/// An in-process HTTP upstream answering every request with its method, path
/// and headers as JSON; counts the requests it saw.
pub struct Echo {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        use axum::extract::{Request, State};
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .fallback(|State(hits): State<Arc<AtomicUsize>>, req: Request| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers
                        .entry(k.as_str().to_owned())
                        .or_default()
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                axum::Json(serde_json::json!({
                    "method": req.method().as_str(),
                    "path": req.uri().to_string(),
                    "headers": headers,
                }))
            })
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo upstream");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Echo { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The single value of header `name` in an echo answer.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    let values = echo["headers"][name].as_array()?;
    assert_eq!(values.len(), 1, "header {name} arrived {} times: {echo}", values.len());
    values[0].as_str()
}

// ---------------------------------------------------------------------------
// Envoy

/// Fills `{{name}}` placeholders; panics on any left over.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        let key = format!("{{{{{name}}}}}");
        assert!(out.contains(&key), "template has no {key}");
        out = out.replace(&key, value);
    }
    if let Some(i) = out.find("{{") {
        panic!("unfilled placeholder in template: {}", &out[i..(i + 40).min(out.len())]);
    }
    out
}

/// A file in the repository's `envoy/` directory.
pub fn envoy_file(name: &str) -> String {
    let path = repo_root().join("envoy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A unique hot-restart base id per Envoy of this test run, so that several
/// Envoys (and several test binaries) can run side by side.
fn base_id() -> u32 {
    (std::process::id() % 1_000_000) * 64 + next_id() % 64
}

/// A running Envoy. Its listener's and admin's ports are chosen by Envoy (the
/// config sets port 0) and read back from the admin API, so they never race.
pub struct Envoy {
    /// The (single) listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
    child: ChildGuard,
}

impl Envoy {
    /// Writes `config` to `dir` and runs Envoy with it, waiting until its
    /// listener accepts connections. `config` should bind admin and listener
    /// to port 0.
    pub async fn start(dir: &TempDir, config: &str) -> Envoy {
        let id = next_id();
        let cfg_path = dir.join(&format!("envoy-{id}.yaml"));
        std::fs::write(&cfg_path, config).unwrap();
        let admin_path = dir.join(&format!("envoy-{id}.admin"));
        let stdout = dir.join(&format!("envoy-{id}.access.log"));
        let stderr = dir.join(&format!("envoy-{id}.log"));
        let mut child = ChildGuard::spawn(
            "envoy",
            Command::new(envoy_bin())
                .arg("-c")
                .arg(&cfg_path)
                .args(["--base-id", &base_id().to_string(), "--concurrency", "1"])
                .arg("--admin-address-path")
                .arg(&admin_path)
                // Access logs are flushed every 10s by default.
                .args(["--file-flush-interval-msec", "50", "-l", "info"])
                .stdin(Stdio::null())
                .stdout(log_file(&stdout))
                .stderr(log_file(&stderr)),
        );
        let client = http_client();
        let deadline = Instant::now() + WAIT;
        fn fail(why: String, stderr: &Path) -> ! {
            panic!("envoy: {why}\n--- envoy log ---\n{}", tail(stderr, 40))
        }
        let (admin, addr) = loop {
            if let Some(status) = child.exited() {
                fail(format!("exited with {status} during start-up"), &stderr);
            }
            if Instant::now() > deadline {
                fail(format!("not listening after {WAIT:?}"), &stderr);
            }
            let found = async {
                let admin: SocketAddr = std::fs::read_to_string(&admin_path).ok()?.trim().parse().ok()?;
                let ready = client.get(format!("http://{admin}/ready")).send().await.ok()?;
                if !ready.status().is_success() {
                    return None;
                }
                let listeners: Value =
                    client.get(format!("http://{admin}/listeners?format=json")).send().await.ok()?.json().await.ok()?;
                let sa = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
                let addr = SocketAddr::new(sa["address"].as_str()?.parse().ok()?, sa["port_value"].as_u64()? as u16);
                if addr.port() == 0 {
                    return None;
                }
                TcpStream::connect(addr).ok()?;
                Some((admin, addr))
            }
            .await;
            if let Some(found) = found {
                break found;
            }
            tokio::time::sleep(POLL).await;
        };
        Envoy { addr, admin, stdout, stderr, child }
    }

    /// Envoy from `envoy/e2e.yaml.tmpl`, in front of `stsgate` and `upstream`.
    pub async fn start_e2e(dir: &TempDir, stsgate: SocketAddr, upstream: SocketAddr) -> Envoy {
        let config = render(
            &envoy_file("e2e.yaml.tmpl"),
            &[
                ("admin_port", "0".into()),
                ("listen_port", "0".into()),
                ("stsgate_grpc_port", stsgate.port().to_string()),
                ("upstream_port", upstream.port().to_string()),
            ],
        );
        Envoy::start(dir, &config).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn access_log(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub fn log(&self) -> String {
        tail(&self.stderr, 60)
    }

    /// Waits for an access log line containing every one of `needles`.
    pub async fn wait_access_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.access_log().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            if Instant::now() > deadline {
                panic!("no access log line contains all of {needles:?}; access log:\n{}", self.access_log());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A counter or gauge from the admin `/stats`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let text = http_client()
            .get(format!("http://{}/stats?filter=^{name}$", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
    }
}

/// Verifies a token minted by stsgate against its published JWKS.
pub async fn verify_with_jwks(sts: &Stsgate, token: &str, audience: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = http_client()
        .get(format!("http://{}/.well-known/jwks.json", sts.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().expect("minted token has a kid");
    let jwk = jwks.find(&kid).unwrap_or_else(|| panic!("kid {kid} not in stsgate's JWKS"));
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[sts.issuer()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("minted token does not verify against stsgate's JWKS: {e}"))
        .claims
}
