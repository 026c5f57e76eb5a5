//! stsgate-loadgen: the load generator and helpers behind `scripts/bench.sh`.
//! Not part of the production binary: build with
//! `cargo build --release --features loadgen --bin stsgate-loadgen`.
//!
//! - `grpc`: N concurrent Check calls over C HTTP/2 channels for a fixed
//!   duration (after a warm-up) or a fixed count; prints one JSON line on
//!   stdout (req/s, p50/p90/p99/max, errors) and a human line on stderr.
//! - `noop-server`: a do-nothing ext_authz server (answers OK, optionally with
//!   one overwrite header of N bytes, like a cached exchange; with `--crypto`,
//!   it first does a cold exchange's RS256 verify and ES256 sign).
//! - `mint-subjects`: an RS256 "IdP" key, its JWKS file and subject tokens.
//! - `wait-serving`: waits until grpc.health.v1 says SERVING.
//! - `startup`: spawns `stsgate serve` N times, timing spawn -> first SERVING.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use stsgate::config::SignAlg;
use stsgate::engine::mint::new_jti;
use stsgate::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use stsgate::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use stsgate::pb::envoy::service::auth::v3::check_response::HttpResponse;
use stsgate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use stsgate::pb::google::rpc::Status as RpcStatus;
use stsgate::signing::Signer;
use stsgate::testkit::load::{self, Answer, Audiences, Decode, Driver, Expect, Mix, Outcome, Shot};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// stsgate's allocator: the do-nothing server is the baseline of stsgate's
/// own gRPC cost, so it allocates the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "stsgate-loadgen", about = "Load generator and helpers for stsgate benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A do-nothing ext_authz Check server (plus grpc.health.v1, SERVING).
    NoopServer {
        #[arg(long)]
        listen: SocketAddr,
        /// Answer with one overwrite header whose value is this many bytes (0 = no header).
        #[arg(long, default_value_t = 0)]
        header_bytes: usize,
        /// Name of that header.
        #[arg(long, default_value = "authorization")]
        header_name: String,
        /// Also answer with dynamic metadata of this many string fields (stsgate sends 8).
        #[arg(long, default_value_t = 0)]
        metadata_fields: usize,
        /// Tokio worker threads (default: one per core, like stsgate).
        #[arg(long)]
        threads: Option<usize>,
        /// Do the crypto ceiling in every Check before answering: an RS256
        /// verification of a signing input as long as this token's (re-signed
        /// with a key of our own) and an ES256 signature of one as long as the
        /// answer's header token (aws-lc-rs, keys parsed once, as the
        /// `ceiling/*` benches). The same work a cold exchange cannot avoid,
        /// in a server that does nothing else: the cold path's baseline.
        #[arg(long, value_name = "TOKEN_FILE")]
        crypto: Option<PathBuf>,
    },
    /// Drive Check RPCs against a target and report throughput and latency.
    Grpc {
        #[arg(long)]
        target: SocketAddr,
        /// The subject token (sent as `authorization: Bearer T`).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file of subject tokens, one per line, used round-robin.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The audience, sent as context extension `audience`.
        #[arg(long, default_value = "bench-api")]
        audience: String,
        /// With --audiences N: cycle through audiences PREFIX000000 .. PREFIX{N-1}.
        #[arg(long)]
        audience_prefix: Option<String>,
        #[arg(long, default_value_t = 1)]
        audiences: u64,
        /// Concurrent in-flight calls.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections the calls are spread over.
        #[arg(long, default_value_t = 2)]
        channels: usize,
        /// Measured duration (after the warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Send exactly this many requests instead (no warm-up, no duration).
        #[arg(long)]
        count: Option<u64>,
        /// Client tokio worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Free-form label copied into the JSON line.
        #[arg(long, default_value = "")]
        label: String,
        /// Exit with status 1 when more calls than this failed.
        #[arg(long, default_value_t = 0)]
        max_errors: u64,
    },
    /// Generate an RS256 IdP key, its JWKS and subject tokens.
    MintSubjects {
        /// Output directory: idp-jwks.json, token.txt (the first), tokens.txt (all).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "https://idp.bench.example/realms/corp")]
        issuer: String,
        /// `aud` of the subject tokens.
        #[arg(long, default_value = "mesh-gateway")]
        aud: String,
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Wait until the target's grpc.health.v1 Health/Check ("") answers SERVING.
    WaitServing {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Time `stsgate serve --config F` from spawn to the first SERVING, N times.
    Startup {
        #[arg(long)]
        stsgate: PathBuf,
        #[arg(long)]
        config: PathBuf,
        /// The gRPC address the config listens on.
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Cmd::NoopServer { threads, .. } => *threads,
        Cmd::Grpc { threads, .. } => Some(*threads),
        _ => Some(1),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stsgate-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stsgate-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::NoopServer { listen, header_bytes, header_name, metadata_fields, crypto, .. } => {
            let crypto = match crypto {
                None => None,
                Some(file) => Some(Arc::new(Ceiling::new(&file, header_bytes)?)),
            };
            noop_server(listen, header_bytes, header_name, metadata_fields, crypto).await
        }
        Cmd::Grpc {
            target,
            token,
            token_file,
            audience,
            audience_prefix,
            audiences,
            concurrency,
            channels,
            duration,
            warmup,
            count,
            label,
            max_errors,
            ..
        } => {
            let tokens = match (token, token_file) {
                (Some(t), _) => vec![t],
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                (None, None) => bail!("give --token or --token-file"),
            };
            if tokens.is_empty() {
                bail!("no tokens");
            }
            let load = Load {
                target,
                tokens,
                audience,
                audience_prefix,
                audiences: audiences.max(1),
                concurrency: concurrency.max(1),
                channels: channels.max(1),
                duration,
                warmup,
                count,
                label,
            };
            let report = load.run().await?;
            println!("{}", report.json);
            eprintln!("{}", report.human);
            Ok(if report.errors > max_errors { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Cmd::MintSubjects { out, count, issuer, aud, ttl } => mint_subjects(out, count, &issuer, &aud, ttl),
        Cmd::WaitServing { target, timeout } => {
            let took = wait_serving(target, timeout, Duration::from_millis(20)).await?;
            eprintln!("{target} SERVING after {:.0} ms", took.as_secs_f64() * 1e3);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Startup { stsgate, config, target, runs, timeout } => {
            startup(&stsgate, &config, target, runs, timeout).await
        }
    }
}

// ---------------------------------------------------------------------------
// The do-nothing server

/// The crypto ceiling of a cold exchange, as one server does it per Check:
/// measured in a server, it pays what any server doing this crypto pays
/// there (its caches shared with the network stack, a peer to wake when it
/// answers at a lower rate), which a tight criterion loop does not.
struct Ceiling {
    rsa: aws_lc_rs::signature::ParsedPublicKey,
    subject_input: Vec<u8>,
    rsa_sig: Vec<u8>,
    ec: aws_lc_rs::signature::EcdsaKeyPair,
    minted_input: Vec<u8>,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl Ceiling {
    /// `token_file`: a subject token (first line); `header_bytes`: the
    /// answer's header, "Bearer " and an ES256 token (86 characters of
    /// signature after the last dot).
    fn new(token_file: &std::path::Path, header_bytes: usize) -> anyhow::Result<Ceiling> {
        use aws_lc_rs::signature::{self, KeyPair as _};
        let text =
            std::fs::read_to_string(token_file).with_context(|| format!("cannot read {}", token_file.display()))?;
        let token = text.lines().next().unwrap_or_default().trim();
        let Some((signing_input, _)) = token.rsplit_once('.') else {
            bail!("{}: not a JWS compact token", token_file.display());
        };
        let Some(minted_len) = header_bytes.checked_sub("Bearer ".len() + 1 + 86) else {
            bail!("--crypto needs --header-bytes of an ES256 token (at least 94)");
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
        let mut rsa_sig = vec![0; key.public_modulus_len()];
        key.sign(&signature::RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut rsa_sig)
            .map_err(|e| anyhow::anyhow!("RSA sign: {e}"))?;
        let rsa = signature::ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
            .map_err(|e| anyhow::anyhow!("RSA public key: {e}"))?;
        let ec = signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| anyhow::anyhow!("P-256 key: {e}"))?;
        Ok(Ceiling {
            rsa,
            subject_input: signing_input.as_bytes().to_vec(),
            rsa_sig,
            ec,
            minted_input: vec![b'e'; minted_len],
            rng,
        })
    }

    fn run(&self) -> Result<(), Status> {
        self.rsa
            .verify_sig(&self.subject_input, &self.rsa_sig)
            .map_err(|_| Status::internal("ceiling: RS256 verification failed"))?;
        let sig = self.ec.sign(&self.rng, &self.minted_input).map_err(|_| Status::internal("ceiling: ES256 failed"))?;
        std::hint::black_box(sig);
        Ok(())
    }
}

struct Noop {
    /// `--crypto`: the ceiling's work, done for every Check.
    crypto: Option<Arc<Ceiling>>,
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if let Some(c) = &self.crypto {
            c.run()?;
        }
        Ok(Response::new(self.answer.clone()))
    }
}

async fn noop_server(
    listen: SocketAddr,
    header_bytes: usize,
    header_name: String,
    metadata_fields: usize,
    crypto: Option<Arc<Ceiling>>,
) -> anyhow::Result<ExitCode> {
    let http_response = (header_bytes > 0).then(|| {
        // "Bearer " + a token-like value, header_bytes long in total.
        let mut value = String::from("Bearer ");
        while value.len() < header_bytes {
            value.push(char::from(b'a' + (value.len() % 26) as u8));
        }
        value.truncate(header_bytes);
        HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue { key: header_name, value, raw_value: Vec::new() }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            }],
            ..Default::default()
        })
    });
    let answer = CheckResponse {
        status: Some(RpcStatus { code: 0, message: String::new(), details: Vec::new() }),
        http_response,
        dynamic_metadata: (metadata_fields > 0).then(|| prost_types::Struct {
            fields: (0..metadata_fields)
                .map(|i| {
                    let value = prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(format!("value-{i:02}-bench"))),
                    };
                    (format!("field{i}"), value)
                })
                .collect(),
        }),
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    eprintln!(
        "noop ext_authz server on {} (header bytes: {header_bytes}, metadata fields: {metadata_fields})",
        listener.local_addr()?
    );
    tonic::transport::Server::builder()
        // As stsgate does: Envoy resets in-flight Checks when wrk disconnects.
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(health)
        .add_service(AuthorizationServer::new(Noop { crypto, answer }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// The load (its core, shared with the fault tests, is `stsgate::testkit::load`)

struct Load {
    target: SocketAddr,
    tokens: Vec<String>,
    audience: String,
    audience_prefix: Option<String>,
    audiences: u64,
    concurrency: usize,
    channels: usize,
    duration: Duration,
    warmup: Duration,
    count: Option<u64>,
    label: String,
}

struct Report {
    json: String,
    human: String,
    errors: u64,
}

struct TaskStats {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

async fn connect(target: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{target}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))
}

/// The error kind and message of an answer that is not OK.
fn describe(answer: &Answer) -> Option<(String, String)> {
    match answer {
        Answer::Allowed { .. } => None,
        Answer::Denied { rpc_code, message, .. } => Some((format!("check_code_{rpc_code}"), message.clone())),
        Answer::Failed { code, message } => Some((format!("grpc_{code:?}"), message.clone())),
    }
}

impl Load {
    async fn run(self) -> anyhow::Result<Report> {
        let mut channels = Vec::with_capacity(self.channels);
        for _ in 0..self.channels {
            channels.push(connect(self.target).await?);
        }
        let audiences = match &self.audience_prefix {
            Some(prefix) => Audiences::Numbered { prefix: prefix.clone(), count: self.audiences },
            None => Audiences::List(vec![self.audience.clone()]),
        };
        let shots = self.tokens.iter().enumerate().map(|(i, t)| Shot::new(format!("token-{i}"), t, Expect::Any));
        let mix = Mix::new(shots.collect(), audiences);

        // One probe, so a misconfiguration fails loudly instead of as a flood of errors.
        let probe_audience = match &self.audience_prefix {
            Some(p) => format!("{p}probe"),
            None => self.audience.clone(),
        };
        let probe = AuthorizationClient::new(channels[0].clone())
            .check(load::check_request(&self.tokens[0], &probe_audience))
            .await;
        let probe = match probe {
            Ok(resp) => load::classify(resp.get_ref()),
            Err(s) => Answer::Failed { code: s.code(), message: s.message().to_owned() },
        };
        if let Some((kind, msg)) = describe(&probe) {
            bail!("probe Check against {} failed: {kind}: {msg}", self.target);
        }

        let start = Instant::now();
        let mut driver = Driver::new(self.concurrency, Decode::StatusOnly);
        let measure_from = match self.count {
            Some(count) => {
                driver.count = Some(count);
                start
            }
            None => {
                driver.until = Some(start + self.warmup + self.duration);
                start + self.warmup
            }
        };
        let init = || TaskStats {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            first_error: None,
        };
        let record = move |stats: &mut TaskStats, o: Outcome| {
            if o.started < measure_from {
                return;
            }
            let _ = stats.hist.record(((o.finished - o.started).as_micros() as u64).max(1));
            match describe(&o.answer) {
                None => stats.ok += 1,
                Some((kind, msg)) => {
                    *stats.errors.entry(kind).or_default() += 1;
                    stats.first_error.get_or_insert(msg);
                }
            }
        };
        let states = driver.run(&channels, Arc::new(ArcSwap::from_pointee(mix)), init, record).await;

        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut ok = 0u64;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut first_error = None;
        for s in states {
            hist.add(&s.hist)?;
            ok += s.ok;
            for (k, v) in s.errors {
                *errors.entry(k).or_default() += v;
            }
            if first_error.is_none() {
                first_error = s.first_error;
            }
        }
        let window = match self.count {
            Some(_) => start.elapsed().as_secs_f64(),
            None => self.duration.as_secs_f64(),
        };
        let shared = self;
        let error_count: u64 = errors.values().sum();
        let total = ok + error_count;
        let rps = total as f64 / window;
        let q = |p: f64| hist.value_at_quantile(p);
        let json = json!({
            "label": shared.label,
            "target": shared.target.to_string(),
            "concurrency": shared.concurrency,
            "channels": shared.channels,
            "window_s": (window * 1000.0).round() / 1000.0,
            "requests": total,
            "ok": ok,
            "errors": error_count,
            "errors_by_kind": errors,
            "first_error": first_error,
            "rps": (rps * 10.0).round() / 10.0,
            "mean_us": (hist.mean() * 10.0).round() / 10.0,
            "p50_us": q(0.50),
            "p90_us": q(0.90),
            "p99_us": q(0.99),
            "max_us": hist.max(),
        });
        let human = format!(
            "{}{} c={} ch={}: {:.0} req/s over {:.1}s, {} requests, {} errors; p50 {} us, p90 {} us, p99 {} us, max {} us",
            if shared.label.is_empty() { String::new() } else { format!("[{}] ", shared.label) },
            shared.target,
            shared.concurrency,
            shared.channels,
            rps,
            window,
            total,
            error_count,
            q(0.50),
            q(0.90),
            q(0.99),
            hist.max()
        );
        Ok(Report { json: json.to_string(), human, errors: error_count })
    }
}

// ---------------------------------------------------------------------------
// Subject tokens

fn mint_subjects(out: PathBuf, count: usize, issuer: &str, aud: &str, ttl: Duration) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let signer = Signer::generate("bench-idp-1", SignAlg::RS256)?;
    let jwks = json!({ "keys": [signer.public_jwk()] });
    std::fs::write(out.join("idp-jwks.json"), jwks.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let mut all = String::new();
    let mut first = None;
    for i in 0..count.max(1) {
        let claims = json!({
            "iss": issuer,
            "sub": format!("user-{i:06}"),
            "aud": [aud, "account"],
            "exp": now + ttl.as_secs() as i64,
            "iat": now,
            "nbf": now,
            "jti": new_jti()?,
            "scope": "openid profile email orders.read orders.write",
            "client_id": "web-frontend",
            "groups": ["customers", "staff"],
            "email": format!("user-{i:06}@bench.example"),
        });
        let token = signer.sign_typed("JWT", &claims)?;
        first.get_or_insert_with(|| token.clone());
        all.push_str(&token);
        all.push('\n');
    }
    let first = first.unwrap_or_default();
    std::fs::write(out.join("token.txt"), &first)?;
    std::fs::write(out.join("tokens.txt"), all)?;
    eprintln!(
        "wrote {} subject token(s) of ~{} bytes and the IdP JWKS to {}",
        count.max(1),
        first.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// Readiness and start-up time

/// Polls Health/Check until SERVING; returns the time it took.
async fn wait_serving(target: SocketAddr, timeout: Duration, poll: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + timeout;
    let endpoint = Endpoint::from_shared(format!("http://{target}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500));
    let mut client: Option<HealthClient<Channel>> = None;
    let mut last = String::from("not connected");
    loop {
        if client.is_none() {
            match endpoint.connect().await {
                Ok(ch) => client = Some(HealthClient::new(ch)),
                Err(e) => last = format!("connect: {e}"),
            }
        }
        if let Some(c) = client.as_mut() {
            match c.check(HealthCheckRequest { service: String::new() }).await {
                Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32 => return Ok(started.elapsed()),
                Ok(resp) => last = format!("status {}", resp.get_ref().status),
                Err(e) => {
                    last = format!("health check: {e}");
                    client = None;
                }
            }
        }
        if Instant::now() > deadline {
            bail!("{target} not SERVING after {timeout:?} ({last})");
        }
        tokio::time::sleep(poll).await;
    }
}

async fn startup(
    stsgate: &std::path::Path,
    config: &std::path::Path,
    target: SocketAddr,
    runs: usize,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(stsgate)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot spawn {}", stsgate.display()))?;
        let ready = wait_serving(target, timeout, Duration::from_millis(1)).await;
        let took = t0.elapsed();
        let _ = child.kill().await;
        ready?;
        times.push(took.as_secs_f64() * 1e3);
        // Let the old listeners close before the next spawn binds them again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let rounded: Vec<f64> = times.iter().map(|t| (t * 10.0).round() / 10.0).collect();
    println!("{}", json!({ "runs_ms": rounded, "median_ms": (median * 10.0).round() / 10.0 }));
    eprintln!("startup to SERVING: median {median:.1} ms over {} runs ({rounded:?})", times.len());
    Ok(ExitCode::SUCCESS)
}
