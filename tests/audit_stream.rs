//! The audit event stream (issue #16, part 1) of a real stsgate: one JSON
//! line for every token minted (exchange, delegation, impersonation,
//! re-exchange) and every policy refusal at either front door, with the
//! documented fields and never token material; sampling that can drop plain
//! exchanges only; a file rotated away and reopened on SIGHUP (the real
//! binary and the real signal); configuration errors with their key paths.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";
const INTRUDER: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SUPPORT: &str = "spiffe://cluster.local/ns/ops/sa/support-console";
const SECRET: &str = "s3cret-of-the-svc-client-never-in-the-stream";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Every key of a version 1 event, each always present (null when unknown).
const KEYS: [&str; 21] = [
    "stsgate_audit",
    "version",
    "time",
    "event",
    "decision",
    "outcome",
    "door",
    "rule",
    "subject",
    "sub_id",
    "actor_chain",
    "requested_subject",
    "client",
    "client_id",
    "caller",
    "audience",
    "scopes",
    "jti",
    "exp",
    "reason",
    "description",
];

fn rules(idp: &str) -> String {
    format!(
        r#"
- name: plain
  match: {{ issuers: ["{idp}"], audiences: [api] }}
  grant: {{ scopes: ["*"] }}
- name: web-delegates
  match: {{ issuers: ["{idp}"], audiences: [orders], actor: {{ spiffe: ["{WEB}"] }} }}
  grant: {{ outcome: delegation, scopes: ["orders.*"] }}
- name: reissue
  match: {{ issuers: [self], audiences: [reports] }}
  grant: {{ outcome: delegation, scopes: ["*"] }}
- name: support-acts-as-users
  match: {{ issuers: ["{idp}"], audiences: [accounts], actor: {{ spiffe: ["{SUPPORT}"] }} }}
  grant: {{ outcome: impersonation, scopes: ["*"], allow_empty_scope: true, impersonate_subjects: ["user-*"] }}
"#
    )
}

/// A Check caller identified by XFCC from 127.0.0.1 (stsgate's sidecar in
/// production), a token endpoint with two clients, and `audit` as given.
async fn start(idp: &MockIdp, dir: &TempDir, audit: &str) -> Harness {
    let secret = dir.write("svc.secret", format!("{SECRET}\n"));
    let ext_authz = format!(
        "caller_identity: xfcc\nxfcc_trusted_peers: [127.0.0.1/32]\nrequested_subject_header: x-requested-subject\n\
         callers:\n  - {{ identity: \"{GATEWAY}\", audiences: [\"*\"] }}\n"
    );
    let extra = format!(
        "workloads:\n  - {{ audience: api, spiffe: [\"{WEB}\"] }}\n\
         clients:\n  \
         - {{ client_id: svc, auth: client_secret_post, secret_file: \"{s}\" }}\n  \
         - {{ client_id: bearer-only, auth: client_secret_post, secret_file: \"{s}\", grant_types: [jwt_bearer] }}\n\
         {audit}\n",
        s = secret.display()
    );
    Harness::builder(idp)
        .rules(&rules(&idp.issuer))
        .ext_authz(&ext_authz)
        .edit(move |y| format!("{y}{extra}"))
        .start()
        .await
}

/// A Check from the caller `xfcc_uri` names.
async fn check(h: &Harness, req: CheckRequest, caller: &str) -> CheckResponse {
    let mut req = tonic::Request::new(req);
    let xfcc = format!("By=spiffe://cluster.local/ns/sts/sa/stsgate;URI={caller}");
    req.metadata_mut().insert("x-forwarded-client-cert", xfcc.parse().unwrap());
    AuthorizationClient::new(h.channel.clone()).check(req).await.expect("a CheckResponse").into_inner()
}

fn presenting(token: &str, audience: &str) -> stsgate::testkit::CheckRequestBuilder {
    request_to("api.test", "/").bearer(token).context("audience", audience)
}

/// POSTs a token exchange as a `client_secret_post` client.
async fn token_endpoint(h: &Harness, client: &str, token: &str, audience: &str) -> (u16, Value) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", audience),
        ("client_id", client),
        ("client_secret", SECRET),
    ] {
        form.append_pair(k, v);
    }
    let resp = h
        .http
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The audit file, read as the events are written.
struct Stream {
    path: PathBuf,
    read: usize,
}

impl Stream {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// The events written since the last call, once the writer caught up.
    fn new_events(&mut self, h: &Harness) -> Vec<Value> {
        assert!(h.server().engine().audit.flush(Duration::from_secs(5)), "the audit writer caught up");
        let lines = self.lines();
        let new = lines[self.read..].iter().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
        self.read = lines.len();
        new
    }

    /// Exactly one new event.
    #[track_caller]
    fn one(&mut self, h: &Harness, what: &str) -> Value {
        let mut events = self.new_events(h);
        assert_eq!(events.len(), 1, "{what}: one event, got {events:#?}");
        let e = events.remove(0);
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{what}: the documented keys, no more, no fewer");
        assert_eq!((&e["stsgate_audit"], &e["version"]), (&json!(1), &json!(1)), "{what}");
        let time = e["time"].as_str().unwrap();
        // RFC 3339, UTC, milliseconds: 2026-01-02T03:04:05.678Z
        assert!(time.len() == 24 && time.ends_with('Z') && &time[19..20] == ".", "{what}: {time}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{what}: {time}");
        e
    }
}

/// (event, decision, door, rule) of an event.
fn kind(e: &Value) -> (&str, &str, &str, &str) {
    let s = |k: &str| e[k].as_str().unwrap_or("-");
    (s("event"), s("decision"), s("door"), s("rule"))
}

#[tokio::test]
async fn every_decision_that_mints_and_every_policy_refusal_is_one_event_without_token_material() {
    let idp = MockIdp::start().await;
    let dir = TempDir::new("audit-stream");
    let path = dir.join("audit.jsonl");
    let h = start(&idp, &dir, &format!("audit: {{ file: \"{}\" }}", path.display())).await;
    let mut stream = Stream { path: path.clone(), read: 0 };
    let alice = idp.token(&idp.claims("alice", "orders.read api.read"));
    let operator = idp.token(&idp.claims("operator", "accounts.admin"));
    let mut tokens = vec![alice.clone(), operator.clone(), SECRET.to_owned()];

    // A plain exchange at the Check.
    let api_token = allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await).bearer();
    let (_, claims) = h.verify_minted(&api_token, "api").await;
    let e = stream.one(&h, "exchange");
    assert_eq!(kind(&e), ("minted", "exchange", "ext_authz", "plain"));
    assert_eq!(e["outcome"], "exchange");
    assert_eq!(e["subject"], json!({ "sub": "alice", "iss": idp.issuer }));
    assert_eq!(e["sub_id"], json!({ "format": "iss_sub", "iss": idp.issuer, "sub": "alice" }));
    assert_eq!((&e["caller"], &e["audience"], &e["client"]), (&json!(GATEWAY), &json!("api"), &Value::Null));
    assert_eq!(e["scopes"], json!(["api.read", "orders.read"]));
    assert_eq!((&e["jti"], &e["exp"]), (&claims["jti"], &claims["exp"]), "the minted token's jti and exp");
    assert_eq!(e["client_id"], claims["client_id"]);
    assert_eq!(e["actor_chain"], json!([]));
    tokens.push(api_token.clone());

    // The same request again is a cache hit: the same token, no new event.
    assert_eq!(allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await).bearer(), api_token);
    assert!(stream.new_events(&h).is_empty(), "a cache hit mints nothing");

    // Delegation: web acts for alice.
    let resp = check(&h, presenting(&alice, "orders").peer(WEB).build(), GATEWAY).await;
    let orders_token = allowed(&resp).bearer();
    let e = stream.one(&h, "delegation");
    assert_eq!(kind(&e), ("minted", "delegation", "ext_authz", "web-delegates"));
    assert_eq!(e["actor_chain"], json!([{ "sub": WEB }]));
    assert_eq!(e["subject"], json!({ "sub": "alice", "iss": idp.issuer }));
    assert_eq!(e["scopes"], json!(["orders.read"]));
    tokens.push(orders_token);

    // Re-exchange: web presents its own token (stsgate's) for reports.
    let resp = check(&h, presenting(&api_token, "reports").peer(WEB).build(), GATEWAY).await;
    tokens.push(allowed(&resp).bearer());
    let e = stream.one(&h, "re-exchange");
    assert_eq!(kind(&e), ("minted", "re-exchange", "ext_authz", "reissue"));
    assert_eq!((&e["outcome"], &e["actor_chain"]), (&json!("delegation"), &json!([{ "sub": WEB }])));
    assert_eq!(e["subject"], json!({ "sub": "alice", "iss": STS_ISSUER }));
    // The subject is still named in the user's IdP's namespace.
    assert_eq!(e["sub_id"], json!({ "format": "iss_sub", "iss": idp.issuer, "sub": "alice" }));

    // Impersonation: the support console acts as user-42; nothing in the token says so, the stream does.
    let req = presenting(&operator, "accounts").peer(SUPPORT).header("x-requested-subject", "user-42");
    let resp = check(&h, req.build(), GATEWAY).await;
    let as_user = allowed(&resp).bearer();
    let (_, claims) = h.verify_minted(&as_user, "accounts").await;
    assert_eq!(claims["sub"], "user-42");
    assert!(claims.get("act").is_none());
    let e = stream.one(&h, "impersonation");
    assert_eq!(kind(&e), ("minted", "impersonation", "ext_authz", "support-acts-as-users"));
    assert_eq!(e["subject"], json!({ "sub": "operator", "iss": idp.issuer }));
    assert_eq!(e["actor_chain"], json!([{ "sub": SUPPORT }]));
    assert_eq!(e["requested_subject"], "user-42");
    assert_eq!(e["sub_id"], json!({ "format": "iss_sub", "iss": idp.issuer, "sub": "user-42" }));
    assert_eq!(e["jti"], claims["jti"]);
    tokens.push(as_user);

    // A plain exchange at the token endpoint names the client.
    let (status, body) = token_endpoint(&h, "svc", &alice, "api").await;
    assert_eq!(status, 200, "{body}");
    tokens.push(body["access_token"].as_str().unwrap().to_owned());
    let e = stream.one(&h, "token endpoint exchange");
    assert_eq!(kind(&e), ("minted", "exchange", "token", "plain"));
    assert_eq!((&e["client"], &e["caller"]), (&json!("svc"), &Value::Null));

    // Policy refusals at the Check: by the rules (the subject is known) ...
    let d = denial(&check(&h, presenting(&alice, "nowhere").build(), GATEWAY).await);
    assert_eq!(d.http_status, 403);
    let e = stream.one(&h, "refusal by the rules at the Check");
    assert_eq!(kind(&e), ("refused", "-", "ext_authz", "-"));
    assert_eq!((&e["reason"], &e["audience"], &e["caller"]), (&json!("no_rule"), &json!("nowhere"), &json!(GATEWAY)));
    assert_eq!(e["subject"], json!({ "sub": "alice", "iss": idp.issuer }));
    assert_eq!(e["description"], "no rule allows this exchange for audience \"nowhere\"");
    assert_eq!((&e["jti"], &e["outcome"]), (&Value::Null, &Value::Null));
    // ... and of the caller (no subject was looked at).
    let d = denial(&check(&h, presenting(&alice, "api").build(), INTRUDER).await);
    assert_eq!(d.http_status, 403);
    let e = stream.one(&h, "caller refused");
    assert_eq!(kind(&e), ("refused", "-", "ext_authz", "-"));
    assert_eq!((&e["reason"], &e["caller"], &e["subject"]), (&json!("caller_unknown"), &json!(INTRUDER), &Value::Null));

    // Policy refusals at the token endpoint: by the rules, and a grant the client may not use.
    let (status, body) = token_endpoint(&h, "svc", &alice, "nowhere").await;
    assert_eq!(status, 400, "{body}");
    let e = stream.one(&h, "refusal by the rules at the token endpoint");
    assert_eq!(kind(&e), ("refused", "-", "token", "-"));
    assert_eq!((&e["reason"], &e["client"]), (&json!("no_rule"), &json!("svc")));
    assert_eq!(e["subject"], json!({ "sub": "alice", "iss": idp.issuer }));
    let (status, body) = token_endpoint(&h, "bearer-only", &alice, "api").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
    let e = stream.one(&h, "grant not allowed");
    assert_eq!(
        (&e["reason"], &e["client"], &e["door"]),
        (&json!("grant_not_allowed"), &json!("bearer-only"), &json!("token"))
    );

    // A token that does not validate is not a policy decision: no event.
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    let d = denial(&check(&h, presenting(&forged, "api").build(), GATEWAY).await);
    assert_eq!(d.http_status, 401);
    assert!(stream.new_events(&h).is_empty(), "a bad token is no audit event");

    // Never token material: no token used or minted, no secret, no JWS at all.
    for line in stream.lines() {
        for t in &tokens {
            assert!(!line.contains(t.as_str()), "token material in {line}");
        }
        for part in tokens.iter().flat_map(|t| t.split('.')).filter(|p| p.len() > 16) {
            assert!(!line.contains(part), "a token's part in {line}");
        }
        assert!(!line.contains(".eyJ"), "{line}");
    }
    assert_eq!(h.metric("stsgate_audit_events_total", &["event=\"minted\""]).await, Some(5.0));
    assert_eq!(h.metric("stsgate_audit_events_total", &["event=\"refused\""]).await, Some(4.0));
    h.shutdown().await;
}

#[tokio::test]
async fn sampling_drops_plain_exchanges_only() {
    let idp = MockIdp::start().await;
    let dir = TempDir::new("audit-sampling");
    let path = dir.join("audit.jsonl");
    // No cache: each plain exchange below is minted anew, and sampled out.
    let audit =
        format!("audit: {{ file: \"{}\", sample_exchanges: 0.0 }}\ncache: {{ enabled: false }}", path.display());
    let h = start(&idp, &dir, &audit).await;
    let mut stream = Stream { path, read: 0 };
    let alice = idp.token(&idp.claims("alice", "orders.read api.read"));
    let operator = idp.token(&idp.claims("operator", "accounts.admin"));

    let mut api_token = String::new();
    for _ in 0..5 {
        api_token = allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await).bearer();
    }
    let (status, _) = token_endpoint(&h, "svc", &alice, "api").await;
    assert_eq!(status, 200);
    assert!(stream.new_events(&h).is_empty(), "plain exchanges sampled out");

    let req = presenting(&operator, "accounts").peer(SUPPORT).header("x-requested-subject", "user-7");
    allowed(&check(&h, req.build(), GATEWAY).await);
    assert_eq!(
        kind(&stream.one(&h, "impersonation")),
        ("minted", "impersonation", "ext_authz", "support-acts-as-users")
    );
    allowed(&check(&h, presenting(&alice, "orders").peer(WEB).build(), GATEWAY).await);
    assert_eq!(stream.one(&h, "delegation")["decision"], "delegation");
    allowed(&check(&h, presenting(&api_token, "reports").peer(WEB).build(), GATEWAY).await);
    assert_eq!(stream.one(&h, "re-exchange")["decision"], "re-exchange");
    denial(&check(&h, presenting(&alice, "nowhere").build(), GATEWAY).await);
    assert_eq!(stream.one(&h, "refusal")["event"], "refused");
    assert_eq!(h.metric("stsgate_audit_events_total", &["event=\"minted\""]).await, Some(3.0));
    h.shutdown().await;
}

#[tokio::test]
async fn a_file_moved_away_is_reopened_at_the_next_write_even_without_a_signal() {
    let idp = MockIdp::start().await;
    let dir = TempDir::new("audit-moved");
    let path = dir.join("audit.jsonl");
    let h = start(&idp, &dir, &format!("audit: {{ file: \"{}\" }}\ncache: {{ enabled: false }}", path.display())).await;
    let alice = idp.token(&idp.claims("alice", "api.read"));
    allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await);
    let mut old = Stream { path: path.clone(), read: 0 };
    assert_eq!(old.new_events(&h).len(), 1);
    let rotated = dir.join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    // The writer looks at the path at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await);
    let mut new = Stream { path: path.clone(), read: 0 };
    assert_eq!(new.one(&h, "after the move")["event"], "minted");
    assert_eq!(Stream { path: rotated, read: 0 }.lines().len(), 1, "nothing more in the moved file");
    h.shutdown().await;
}

#[tokio::test]
async fn audit_settings_are_checked_with_their_key_paths() {
    let idp = MockIdp::start().await;
    let dir = TempDir::new("audit-config");
    // `check-config` names each problem.
    let yaml = Harness::builder(&idp)
        .edit(|y| format!("{y}audit:\n  stdout: false\n  sample_exchanges: 1.5\n  queue: 1\n"))
        .yaml();
    let config = dir.write("bad.yaml", &yaml);
    let out = Command::new(BIN).args(["check-config", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for path in ["audit.stdout: the audit stream cannot be turned off", "audit.sample_exchanges", "audit.queue"] {
        assert!(stderr.contains(path), "{path} not in:\n{stderr}");
    }
    // There is no switch to turn it off.
    let yaml = Harness::builder(&idp).edit(|y| format!("{y}audit:\n  enabled: false\n")).yaml();
    let config = dir.write("off.yaml", &yaml);
    let out = Command::new(BIN).args(["check-config", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("audit.enabled"), "{stderr}");

    // A file that cannot be opened fails a reload, which names the key and changes nothing.
    let path = dir.join("audit.jsonl");
    let h = start(&idp, &dir, &format!("audit: {{ file: \"{}\" }}", path.display())).await;
    let unopenable = dir.join("no-such-dir").join("audit.jsonl");
    let yaml = h.yaml.replace(&path.display().to_string(), &unopenable.display().to_string());
    let err = h.reload_yaml(&yaml).await.unwrap_err().to_string();
    assert!(err.contains("audit.file: cannot open") && err.contains("no-such-dir"), "{err}");
    let alice = idp.token(&idp.claims("alice", "api.read"));
    allowed(&check(&h, presenting(&alice, "api").build(), GATEWAY).await);
    assert_eq!(Stream { path, read: 0 }.new_events(&h).len(), 1, "the old stream is still in use");
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// The real binary: stdout as its own stream, rotation and SIGHUP
// ---------------------------------------------------------------------------

const SERVE_RULES: &str = "- { name: plain, match: { audiences: [api] }, grant: { scopes: [\"*\"] } }";

/// `stsgate serve` with its stdout and stderr in files.
struct Serve {
    child: ChildGuard,
    grpc: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Serve {
    async fn start(idp: &MockIdp, dir: &TempDir, audit: &str) -> Serve {
        let (stdout, stderr) = (dir.join("stdout.log"), dir.join("stderr.log"));
        for _attempt in 0..3 {
            let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
            let listen = format!("listen:\n  grpc: {grpc}\n  http: {http}\n");
            let audit = audit.to_owned();
            let yaml = Harness::builder(idp).rules(SERVE_RULES).edit(move |y| format!("{listen}{y}{audit}\n")).yaml();
            let config = dir.write("config.yaml", &yaml);
            let mut child = ChildGuard::spawn(
                "stsgate serve",
                Command::new(BIN)
                    .args(["serve", "--config", config.to_str().unwrap()])
                    .env("RUST_LOG", "info")
                    .env_remove("STSGATE_CONFIG")
                    .env_remove("STSGATE_LOG_FORMAT")
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(&stdout).unwrap())
                    .stderr(std::fs::File::create(&stderr).unwrap()),
            );
            let deadline = Instant::now() + WAIT;
            while child.exited().is_none() {
                let ready = reqwest::get(format!("http://{http}/readyz")).await;
                if ready.is_ok_and(|r| r.status() == 200) {
                    return Serve { child, grpc, stdout, stderr };
                }
                assert!(Instant::now() < deadline, "not ready:\n{}", read(&stderr));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("stsgate serve exited early:\n{}", read(&stderr));
        }
        panic!("stsgate serve did not start");
    }

    async fn check(&self, req: CheckRequest) -> CheckResponse {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.grpc)).unwrap();
        AuthorizationClient::new(channel.connect().await.unwrap()).check(req).await.unwrap().into_inner()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn events(path: &Path) -> Vec<Value> {
    read(path).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_a_rotated_file_and_stdout_carries_only_marked_events() {
    init_logging();
    let idp = MockIdp::start().await;
    let dir = TempDir::new("audit-sighup");
    let path = dir.join("audit.jsonl");
    let audit = format!("audit: {{ file: \"{}\", stdout: true }}\ncache: {{ enabled: false }}", path.display());
    let mut s = Serve::start(&idp, &dir, &audit).await;
    let alice = idp.token(&idp.claims("alice", "api.read"));
    let api = || presenting(&alice, "api").build();
    allowed(&s.check(api()).await);
    eventually("the first event is written", || async { events(&path).len() == 1 }).await;

    // logrotate: rename, then SIGHUP. Nothing is written meanwhile, so only
    // the signal can make the writer reopen (it looks for a moved file only
    // when it has something to write).
    let rotated = dir.join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    s.child.signal("HUP");
    eventually("the file is reopened on SIGHUP", || async {
        read(&s.stderr).contains("audit file reopened") && path.exists()
    })
    .await;
    let log = read(&s.stderr);
    let reopened = log.lines().find(|l| l.contains("audit file reopened")).unwrap();
    assert!(reopened.contains("SIGHUP"), "{reopened}");
    allowed(&s.check(api()).await);
    allowed(&s.check(api()).await);
    eventually("new events go to the new file", || async { events(&path).len() == 2 }).await;
    assert_eq!(events(&rotated).len(), 1, "the rotated file keeps its event and gets no more");

    // SIGTERM: whatever is queued is written before the process exits.
    allowed(&s.check(api()).await);
    s.child.signal("TERM");
    let deadline = Instant::now() + WAIT;
    while s.child.exited().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events(&path).len(), 3, "flushed at shutdown");

    // stdout is the audit stream alone: every line an event with the marker;
    // the logs are on stderr and carry no event.
    let out = read(&s.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for line in lines {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!((&e["stsgate_audit"], &e["version"]), (&json!(1), &json!(1)), "{line}");
    }
    assert!(!read(&s.stderr).contains("stsgate_audit"), "no event in the logs at RUST_LOG=info");
}
