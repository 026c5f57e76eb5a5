//! The dashboard and alerting rules in `deploy/` against the real thing: every
//! metric they name is in a real scrape of the real binary (with the gRPC
//! listener on TLS, so that its series exist), and `promtool` (Debian's
//! prometheus package, installed by `scripts/install-tools.sh`) accepts the
//! rules and passes their unit tests (`deploy/prometheus/stsgate-alerts.test.yaml`).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{ChildGuard, TempDir, free_port, init_logging};

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
const ALERTS: &str = "deploy/prometheus/stsgate-alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/stsgate-alerts.test.yaml";
const DASHBOARD: &str = "deploy/grafana/stsgate-dashboard.json";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every `stsgate_*` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("stsgate_") {
        let start = i + at;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The sample names of an OpenMetrics scrape: those of its sample lines, and
/// those its `# TYPE` lines promise (a labelled family has no series until
/// its first event: `stsgate_connections_closed_total` before a timeout).
fn scraped_samples(scrape: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (family, kind) = line.split_once(' ').unwrap_or((line, ""));
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// A real `stsgate serve`: the dev IdP as its trusted issuer, the gRPC
/// listener on TLS, one rule.
struct Running {
    _child: ChildGuard,
    http: String,
    _dir: TempDir,
}

async fn start() -> Running {
    init_logging();
    let dir = TempDir::new("observability");
    let fixture = |f: &str| repo(&format!("tests/fixtures/mtls/{f}")).display().to_string();
    let client = reqwest::Client::new();
    for _attempt in 0..3 {
        let (grpc, http) = (free_port(), free_port());
        let config = format!(
            "listen:\n  grpc: 127.0.0.1:{grpc}\n  http: 127.0.0.1:{http}\n  handshake_timeout: 1s\n  grpc_tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n\
             issuer: http://127.0.0.1:{http}\n\
             signing:\n  keys: [{{ kid: k1, alg: ES256, ephemeral: true }}]\n\
             trusted_issuers:\n  - {{ issuer: \"http://127.0.0.1:{http}/dev-idp\", discovery: true, audiences: [stsgate-dev] }}\n\
             dev_idp: {{ path: /dev-idp, audience: stsgate-dev }}\n\
             clients:\n  - {{ client_id: ops, auth: client_secret_post, secret_env: OBSERVABILITY_SECRET }}\n\
             token_endpoint: {{ allow_unauthenticated: true }}\n\
             rules:\n  - {{ name: exchange, match: {{ audiences: [orders] }}, grant: {{ scopes: [\"*\"], allow_empty_scope: true }} }}\n",
            fixture("server.pem"),
            fixture("server-key.pem"),
            fixture("ca.pem"),
        );
        let path = dir.write("stsgate.yaml", config);
        let log = dir.join("stderr.log");
        let mut child = ChildGuard::spawn(
            "stsgate serve",
            Command::new(BIN)
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "warn")
                .env("OBSERVABILITY_SECRET", "right")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.exited().is_some() {
                // Most likely a port taken between free_port and bind: retry.
                eprintln!("stsgate exited early:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                break;
            }
            let ready = client.get(format!("http://127.0.0.1:{http}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Running { _child: child, http: format!("http://127.0.0.1:{http}"), _dir: dir };
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("stsgate did not start in three attempts");
}

/// Scrapes after one exchange, one refusal, one failed client
/// authentication and one connection closed by a timeout, so that every
/// labelled family has a series.
async fn scrape_after_traffic(sts: &Running) -> String {
    let http = reqwest::Client::new();
    // Silent past handshake_timeout (1 s): closed, and counted.
    let addr = sts.http.trim_start_matches("http://").to_owned();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let wrong_secret = http
        .post(format!("{}/token", sts.http))
        .form(&[("client_id", "ops"), ("client_secret", "wrong"), ("grant_type", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);
    let token: Value = http
        .post(format!("{}/dev-idp/token", sts.http))
        .form(&[("sub", "alice"), ("aud", "stsgate-dev"), ("scope", "orders.read")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subject = token["access_token"].as_str().expect("dev IdP token");
    let exchange = |subject: String| {
        let http = http.clone();
        let url = format!("{}/token", sts.http);
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                    ("subject_token", subject.as_str()),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                    ("audience", "orders"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(exchange(subject.to_owned()).await, 200);
    assert_eq!(exchange(format!("{subject}x")).await, 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(silent);
    let text = http.get(format!("{}/metrics", sts.http)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("stsgate_decisions_total{outcome=\"ok\""), "{text}");
    text
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_stsgate_exports() {
    let sts = start().await;
    let scrape = scrape_after_traffic(&sts).await;
    let samples = scraped_samples(&scrape);
    // The issuer series are read from the live engine at scrape time.
    assert!(
        scrape.contains(&format!("stsgate_issuer_keys{{issuer=\"{}/dev-idp\"}} 1", sts.http)),
        "the dev IdP's one key:\n{scrape}"
    );
    assert!(samples.contains("stsgate_issuer_keys_last_read_timestamp_seconds"), "{scrape}");

    let alerts = std::fs::read_to_string(repo(ALERTS)).unwrap();
    let dashboard = std::fs::read_to_string(repo(DASHBOARD)).unwrap();
    let used: BTreeSet<String> = metric_names(&alerts).into_iter().chain(metric_names(&dashboard)).collect();
    assert!(used.len() >= 10, "the files name {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !samples.contains(*n)).collect();
    assert!(missing.is_empty(), "named in deploy/ but not exported: {missing:?}\nscrape:\n{scrape}");

    // Every panel queries something, from the dashboard's data source.
    let doc: Value = serde_json::from_str(&dashboard).unwrap();
    let panels = doc["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("stsgate_")), "{t}");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
        }
    }
}

#[test]
fn promtool_accepts_the_alerting_rules_and_their_unit_tests_pass() {
    for args in [vec!["check", "rules", ALERTS], vec!["test", "rules", ALERT_TESTS]] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(repo(""))
            .output()
            .expect("promtool (Debian's prometheus package; scripts/install-tools.sh installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

#[test]
fn a_family_promises_its_samples() {
    let scrape = "# TYPE stsgate_a counter\n# TYPE stsgate_h histogram\nstsgate_g{x=\"1\"} 2\n# EOF\n";
    let names: Vec<String> = scraped_samples(scrape).into_iter().collect();
    assert_eq!(names, ["stsgate_a_total", "stsgate_g", "stsgate_h_bucket", "stsgate_h_count", "stsgate_h_sum"]);
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names("rate(stsgate_a_total[5m]) / x_stsgate_b + stsgate_c_bucket{le=\"1\"}");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["stsgate_a_total", "stsgate_c_bucket"]);
}
