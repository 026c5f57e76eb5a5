//! The `stsgate` binary as users run it: `check-config` on good and broken
//! fixtures, `--help` of every subcommand, and a real `stsgate dev` with a
//! token from `stsgate dev-token` exchanged over gRPC.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
const EX_CONFIG: i32 = 64;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn stsgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("STSGATE_CONFIG")
        .env_remove("STSGATE_DEV_IDP")
        .env_remove("STSGATE_LOG_FORMAT")
        .output()
        .expect("run stsgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

// ---------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------

#[test]
fn check_config_accepts_a_good_file_and_notes_what_it_skips() {
    let path = fixture("good.yaml");
    let (stdout, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), 0);
    assert!(stdout.contains("ok (1 trusted issuer(s), 1 rule(s), 1 signing key(s), active kid \"sts-1\")"), "{stdout}");
    // The relative jwks_file was found next to the config, and its encryption key noted.
    assert!(stdout.contains("note: trusted_issuers[0].jwks_file: key \"idp-enc-1\""), "{stdout}");
    assert!(stdout.contains("warning: signing.keys[0] is ephemeral"), "{stdout}");
    assert!(!stderr.contains("problem"), "{stderr}");
    assert!(!stdout.contains("no `audiences`"), "{stdout}");
}

#[test]
fn check_config_warns_about_a_trusted_issuer_without_audiences() {
    let dir = TempDir::new("cli-no-audiences");
    dir.write("idp-jwks.json", std::fs::read(fixture("idp-jwks.json")).unwrap());
    let good = std::fs::read_to_string(fixture("good.yaml")).unwrap();
    let yaml = good.replace("    audiences: [stsgate]\n", "");
    assert_ne!(yaml, good, "good.yaml names the issuer's audiences");
    let path = dir.write("config.yaml", yaml);
    let (stdout, _) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), 0);
    assert!(stdout.contains("warning: trusted_issuers[0] (https://idp.example.test) has no `audiences`"), "{stdout}");
}

#[test]
fn check_config_names_an_unknown_key_with_its_path_and_line() {
    let path = fixture("unknown-key.yaml");
    let (stdout, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("`trusted_issuers[0].jwks_ulr`"), "{stderr}");
    assert!(stderr.contains("line 9"), "{stderr}");
    assert!(stderr.contains("unknown field `jwks_ulr`"), "{stderr}");
    assert!(stderr.contains("jwks_url"), "the valid keys are suggested: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn check_config_names_a_bad_algorithm_with_its_path() {
    let path = fixture("bad-algorithm.yaml");
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("`trusted_issuers[0].algorithms[1]`"), "{stderr}");
    assert!(stderr.contains("HS256"), "{stderr}");
    assert!(stderr.contains("line 10"), "{stderr}");
}

#[test]
fn check_config_lists_every_semantic_problem_at_once() {
    let path = fixture("invalid.yaml");
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
    for (key_path, detail) in [
        ("issuer", "not a URL"),
        ("signing.keys[0].file", "does-not-exist.pem does not exist"),
        ("trusted_issuers[0].jwks_file", "missing-jwks.json does not exist"),
        ("ext_authz.routes[0].path_prefix", "must start with /"),
        ("rules[0].match.issuers[0]", "is not one of trusted_issuers"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("- {key_path}:")))
            .unwrap_or_else(|| panic!("no line for {key_path} in:\n{stderr}"));
        assert!(line.contains(detail), "{line}");
    }
    // Missing files are named where they were looked for: next to the config.
    assert!(stderr.contains(fixture("does-not-exist.pem").to_str().unwrap()), "{stderr}");
}

#[test]
fn check_config_loads_key_files_like_serve_would() {
    let path = fixture("unusable-files.yaml");
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(stderr.contains("- signing: signing key \"sts-1\""), "{stderr}");
    assert!(stderr.contains("not a ES256 private key"), "{stderr}");
    assert!(stderr.contains("- trusted_issuers[0].jwks_file:"), "{stderr}");
    assert!(stderr.contains("symmetric"), "{stderr}");
}

/// The secrets a start would read: a client's secret and JWKS files, and the
/// Redis URL from its file or environment variable.
#[test]
fn check_config_reads_client_and_replay_store_secrets_like_serve_would() {
    let dir = TempDir::new("cli-secrets");
    let base = std::fs::read_to_string(fixture("good.yaml")).unwrap();
    // The files good.yaml names, next to it.
    dir.write("idp-jwks.json", std::fs::read(fixture("idp-jwks.json")).unwrap());
    let path = dir.write(
        "config.yaml",
        format!(
            "{base}\nclients:\n  - {{ client_id: a, auth: client_secret_basic, secret_file: {} }}\n  \
             - {{ client_id: b, auth: private_key_jwt, jwks_file: {} }}\n\
             token_endpoint:\n  replay_store:\n    redis: {{ url_env: STSGATE_TEST_UNSET_REDIS_URL }}\n",
            dir.path().join("missing.secret").display(),
            dir.path().join("missing-jwks.json").display(),
        ),
    );
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("token_endpoint.replay_store.redis.url_env"), "{stderr}");
    assert!(stderr.contains("STSGATE_TEST_UNSET_REDIS_URL is not set"), "{stderr}");
    assert!(stderr.contains("missing.secret"), "{stderr}");

    // rediss:// and the OTLP collector: the TLS files, relative to the
    // configuration file, are read too.
    let path = dir.write(
        "tls.yaml",
        format!(
            "{base}\ntoken_endpoint:\n  replay_store:\n    redis: {{ url: \"rediss://:hunter2@redis:6380/0\", \
             ca_file: redis-ca.pem }}\ntelemetry: {{ otlp_endpoint: \"https://otel:4317\", ca_file: otel-ca.pem }}\n"
        ),
    );
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    let otel = format!("telemetry.ca_file: cannot read {}", dir.path().join("otel-ca.pem").display());
    assert!(stderr.contains(&otel), "{stderr}");
    let missing =
        format!("token_endpoint.replay_store.redis.ca_file: cannot read {}", dir.path().join("redis-ca.pem").display());
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn check_config_of_a_missing_file_is_a_config_error() {
    let dir = TempDir::new("cli-missing");
    let path = dir.path().join("nope.yaml");
    let (_, stderr) = assert_exit(&stsgate(&["check-config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("cannot read") && stderr.contains("nope.yaml"), "{stderr}");
}

#[test]
fn serve_refuses_a_broken_config_before_listening() {
    let path = fixture("invalid.yaml");
    let started = Instant::now();
    let (_, stderr) = assert_exit(&stsgate(&["serve", "--config", path.to_str().unwrap()]), EX_CONFIG);
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------
// help, version, print-config
// ---------------------------------------------------------------------------

#[test]
fn every_subcommand_has_help() {
    let (top, _) = assert_exit(&stsgate(&["--help"]), 0);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for expected in ["serve", "dev", "check-config", "dev-token", "inspect"] {
        assert!(subcommands.iter().any(|c| c == expected), "{expected} missing from:\n{top}");
    }
    for sub in &subcommands {
        let (stdout, _) = assert_exit(&stsgate(&[sub, "--help"]), 0);
        assert!(stdout.contains(&format!("Usage: stsgate {sub}")), "{sub} --help:\n{stdout}");
        let (via_help, _) = assert_exit(&stsgate(&["help", sub]), 0);
        assert_eq!(via_help, stdout, "`help {sub}` and `{sub} --help` agree");
    }
    let (dev_token, _) = assert_exit(&stsgate(&["dev-token", "--help"]), 0);
    for flag in ["--sub", "--scope", "--idp", "--ttl"] {
        assert!(dev_token.contains(flag), "{dev_token}");
    }
    let (version, _) = assert_exit(&stsgate(&["--version"]), 0);
    assert_eq!(version.trim(), format!("stsgate {}", env!("CARGO_PKG_VERSION")));
    // No subcommand is a usage error, not a crash.
    assert_exit(&stsgate(&[]), 2);
}

#[test]
fn dev_print_config_prints_the_embedded_yaml() {
    let (stdout, _) = assert_exit(&stsgate(&["dev", "--print-config"]), 0);
    assert!(stdout.contains("trusted_issuers:") && stdout.contains("dev_idp:"), "{stdout}");
    assert_eq!(stdout, stsgate::config::DEV_YAML);
    // It is a valid configuration once the listener address is known.
    let cfg = stsgate::config::Config::from_yaml_validated(&stdout.replace("{http_addr}", "127.0.0.1:18080")).unwrap();
    assert!(cfg.dev_idp.is_some());
}

// ---------------------------------------------------------------------------
// dev + dev-token, end to end
// ---------------------------------------------------------------------------

/// A running `stsgate dev` on free ports.
struct Dev {
    child: ChildGuard,
    grpc: String,
    http: String,
    _dir: TempDir,
    log: PathBuf,
}

impl Dev {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_dev() -> Dev {
    init_logging();
    let dir = TempDir::new("cli-dev");
    let log = dir.path().join("stderr.log");
    let client = reqwest::Client::new();
    // A free port can be taken between our check and stsgate's bind: retry then.
    for _attempt in 0..3 {
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let mut child = ChildGuard::spawn(
            "stsgate dev",
            Command::new(BIN)
                .args(["dev", "--grpc", &grpc, "--http", &http])
                .env("RUST_LOG", "info")
                .env_remove("STSGATE_LOG_FORMAT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.exited() {
                eprintln!(
                    "stsgate dev exited early ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                break;
            }
            let ready = client.get(format!("http://{http}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Dev { child, grpc, http, _dir: dir, log };
            }
            assert!(
                Instant::now() < deadline,
                "stsgate dev not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("stsgate dev did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_and_dev_token_exchange_end_to_end() {
    let mut dev = start_dev().await;
    let idp = format!("http://{}/dev-idp", dev.http);

    let out = tokio::process::Command::new(BIN)
        .args(["dev-token", "--sub", "alice", "--scope", "a b", "--idp", &idp])
        .env_remove("STSGATE_DEV_IDP")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "dev-token failed:\n{stderr}");
    // Only the JWT, on one line: `$(stsgate dev-token ...)` must just work.
    let token = stdout.strip_suffix('\n').unwrap_or_else(|| panic!("one line: {stdout:?}"));
    assert!(!token.contains(char::is_whitespace), "{stdout:?}");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let (header, claims) = peek(token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "a b");
    assert_eq!(claims["iss"], idp);

    // The token is accepted by the running dev instance's ext_authz.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", dev.grpc)).unwrap().connect().await.unwrap();
    let mut client = stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
    let bearer = format!("Bearer {token}");
    let resp =
        client.check(check_request(&[("authorization", &bearer)], &[], "echo.local", "/")).await.unwrap().into_inner();
    let ok = allowed(&resp);
    let minted = ok.bearer();
    let http = reqwest::Client::new();
    let sts = format!("http://{}", dev.http);
    let (h, c) = verify_with_jwks(&http, &format!("{sts}/.well-known/jwks.json"), &sts, &minted, "echo").await;
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["scope"], "a b");
    assert_eq!(c["client_id"], "dev-client");

    // SIGTERM: a graceful, successful exit.
    dev.child.signal("TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = dev.child.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM:\n{}", dev.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", dev.log());
    assert!(dev.log().contains("shutting down"), "{}", dev.log());
}

/// Runs the pinned grpcurl (`.tools/bin`, installed by scripts/install-tools.sh;
/// missing is a failure, never a skip) with one Check against `grpc`, the
/// request exactly as the README's quick start writes it, and returns the
/// CheckResponse as JSON.
fn grpcurl_check(grpc: &str, request: &serde_json::Value) -> serde_json::Value {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/grpcurl");
    assert!(bin.is_file(), "grpcurl not found at {}: run scripts/install-tools.sh", bin.display());
    let out = Command::new(bin)
        .args(["-plaintext", "-connect-timeout", "5", "-max-time", "20", "-d", &request.to_string(), grpc])
        .arg("envoy.service.auth.v3.Authorization/Check")
        .output()
        .expect("run grpcurl");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "grpcurl failed:\n{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{stdout}"))
}

/// The new token of an allowed grpcurl Check.
fn grpcurl_bearer(resp: &serde_json::Value) -> String {
    let headers = resp["okResponse"]["headers"].as_array().unwrap_or_else(|| panic!("not allowed: {resp:#}"));
    let auth = headers.iter().find(|h| h["header"]["key"] == "authorization").expect("authorization header");
    auth["header"]["value"].as_str().unwrap().strip_prefix("Bearer ").expect("Bearer").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_re_exchanges_web_s_token_for_orders_as_the_readme_shows() {
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    let dev = start_dev().await;
    let idp = format!("http://{}/dev-idp", dev.http);
    let out = tokio::process::Command::new(BIN)
        .args(["dev-token", "--sub", "alice", "--scope", "orders.read", "--idp", &idp])
        .env_remove("STSGATE_DEV_IDP")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "dev-token failed:\n{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // Call 1: the user's token for web (no actor: an exchange).
    let call1 = serde_json::json!({"attributes": {
        "request": {"http": {"headers": {"authorization": format!("Bearer {token}")}}},
        "contextExtensions": {"audience": "web"},
    }});
    let web = grpcurl_bearer(&grpcurl_check(&dev.grpc, &call1));
    // Call 2: web presents its token, as its mTLS identity, to orders.
    let call2 = |principal: &str| {
        serde_json::json!({"attributes": {
            "source": {"principal": principal},
            "request": {"http": {"headers": {"authorization": format!("Bearer {web}")}}},
            "contextExtensions": {"audience": "orders"},
        }})
    };
    let resp = grpcurl_check(&dev.grpc, &call2(WEB));
    assert_eq!(resp["dynamicMetadata"]["rule"], "dev-re-exchange", "{resp:#}");
    let orders = grpcurl_bearer(&resp);
    let sts = format!("http://{}", dev.http);
    let http = reqwest::Client::new();
    let (_, c) = verify_with_jwks(&http, &format!("{sts}/.well-known/jwks.json"), &sts, &orders, "orders").await;
    assert_eq!((c["sub"].as_str(), c["scope"].as_str()), (Some("alice"), Some("orders.read")), "{c}");
    assert_eq!(c["act"], serde_json::json!({"sub": WEB}), "{c}");
    assert_eq!(c["sub_id"], serde_json::json!({"format": "iss_sub", "iss": idp, "sub": "alice"}), "{c}");

    // Anyone but web is refused.
    let resp = grpcurl_check(&dev.grpc, &call2("spiffe://cluster.local/ns/shop/sa/orders"));
    assert_eq!(resp["status"]["code"], 7, "PERMISSION_DENIED: {resp:#}");
    assert_eq!(resp["dynamicMetadata"]["reason"], "presenter_mismatch", "{resp:#}");
}

#[test]
fn dev_token_without_a_running_dev_fails_cleanly() {
    let idp = format!("http://127.0.0.1:{}/dev-idp", free_port());
    let out = stsgate(&["dev-token", "--sub", "alice", "--idp", &idp]);
    let (stdout, stderr) = assert_exit(&out, 1);
    assert!(stdout.is_empty(), "nothing on stdout on failure: {stdout:?}");
    assert!(stderr.contains("cannot reach the dev IdP"), "{stderr}");
}

// ---------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------

/// `stsgate inspect` with stdin, for `-`.
fn inspect(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .arg("inspect")
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stsgate inspect");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn inspect_decodes_a_token_names_its_issuer_and_says_whether_it_is_valid_now() {
    let dev = start_dev().await;
    let http = reqwest::Client::new();
    let idp = format!("http://{}/dev-idp", dev.http);
    let form = [("sub", "alice"), ("scope", "orders.read"), ("client_id", "web-app")];
    let answer: serde_json::Value =
        http.post(format!("{idp}/token")).form(&form).send().await.unwrap().json().await.unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();

    // Decoded only: no configuration, no verdict, the signature never shown.
    let (stdout, _) = assert_exit(&inspect(&[&token], None), 0);
    assert!(stdout.contains("\"sub\": \"alice\""), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("exp: 20") && l.ends_with(')') && l.contains("(in ")), "{stdout}");
    assert!(stdout.contains("issuer: not checked"), "{stdout}");
    assert!(!stdout.contains(token.rsplit('.').next().unwrap()), "{stdout}");

    // Against the running instance's configuration (its dev IdP trusted):
    // valid now, and read from standard input.
    let dir = TempDir::new("cli-inspect");
    let yaml = stsgate::config::DEV_YAML.replace("{http_addr}", &dev.http);
    let config = dir.write("dev.yaml", yaml);
    let config = config.to_str().unwrap();
    let (stdout, stderr) = assert_exit(&inspect(&["--config", config, "-"], Some(&format!("{token}\n"))), 0);
    assert!(stdout.contains(&format!("issuer: trusted_issuers[0] ({idp})")), "{stdout}\n{stderr}");
    assert!(stdout.contains("verification: valid now as a subject token"), "{stdout}");

    // A tampered signature: decoded, refused with the reason, exit 2; JSON too.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (stdout, _) = assert_exit(&inspect(&["--config", config, "--json", &tampered], None), 2);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["claims"]["sub"], "alice");
    assert_eq!(doc["verification"]["valid"], false, "{doc}");
    assert!(doc["verification"]["reason"].as_str().unwrap().contains("signature"), "{doc}");

    // stsgate's own token, minted by the running instance (an ephemeral key
    // this process does not hold): its act chain as a tree, and not valid here.
    let exchange = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("audience", "orders"),
    ];
    let minted: serde_json::Value =
        http.post(format!("http://{}/token", dev.http)).form(&exchange).send().await.unwrap().json().await.unwrap();
    let minted = minted["access_token"].as_str().unwrap_or_else(|| panic!("{minted}"));
    let (stdout, _) = assert_exit(&inspect(&["--config", config, minted], None), 2);
    assert!(stdout.contains("issuer: stsgate itself"), "{stdout}");
    assert!(stdout.contains("verification: refused"), "{stdout}");

    // Not a token at all: exit 1 and what it is.
    let (_, stderr) = assert_exit(&inspect(&["opaque-reference"], None), 1);
    assert!(stderr.contains("opaque token"), "{stderr}");
}
