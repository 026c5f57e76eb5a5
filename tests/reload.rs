//! Configuration hot reload: through `Server::reload_from` against a real
//! server and mock IdP (rules, caches, refusals, restart-only keys, issuers
//! that do not answer, signing keys, issuer documents, readiness), and the real
//! binary reloading on SIGHUP and on a changed file (`--watch-config`).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use stsgate::runtime::reload::{ReloadError, short_hash};
use support::*;

/// Only `billing` (the default rules allow `orders` and `api://*`, not `billing`).
const BILLING_ONLY: &str = r#"
- name: billing
  match:
    audiences: [billing]
  grant:
    scopes: ["billing.*"]
"#;

/// The default `orders` rule with a shorter lifetime.
const ORDERS_ONE_MINUTE: &str = r#"
- name: orders
  match:
    audiences: [orders]
  grant:
    scopes: ["orders.*"]
    max_lifetime: 1m
"#;

const OK: [&str; 1] = ["result=\"ok\""];
const ERROR: [&str; 1] = ["result=\"error\""];
const RELOADS: &str = "stsgate_config_reloads_total";
const LAST_OK: &str = "stsgate_config_last_reload_successful";
const LAST_OK_TIME: &str = "stsgate_config_last_reload_success_timestamp_seconds";
/// grpc.health.v1 ServingStatus.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn jti(token: &str) -> String {
    peek(token).1["jti"].as_str().expect("jti").to_owned()
}

fn lifetime(token: &str) -> i64 {
    let (_, c) = peek(token);
    c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
}

#[track_caller]
fn assert_forbidden(resp: &stsgate::pb::envoy::service::auth::v3::CheckResponse) {
    let d = denial(resp);
    assert_eq!((d.rpc_code, d.http_status), (RPC_PERMISSION_DENIED, 403), "{d:#?}");
}

// ---------------------------------------------------------------------------
// Server::reload_from
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_takes_effect_both_ways() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read billing.read"));
    let before = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_forbidden(&h.check_for(&token, "billing").await);
    let started_at = h.metric(LAST_OK_TIME, &[]).await.expect("timestamp gauge");
    assert_eq!(h.metric(LAST_OK, &[]).await, Some(1.0), "the start-up load counts as a success");
    assert_eq!(h.metric(RELOADS, &OK).await, Some(0.0));

    let yaml = Harness::builder(&idp).rules(BILLING_ONLY).yaml();
    let done = h.reload_yaml(&yaml).await.expect("reload");
    assert_eq!((done.rules, done.trusted_issuers, done.signing_keys), (1, 1, 1));
    assert_eq!(done.active_kid, STS_KID);
    assert_eq!(done.config_hash, short_hash(yaml.as_bytes()));
    assert_eq!(done.config_hash.len(), 12);

    // Denied before, allowed now; allowed before, denied now.
    let billing = allowed(&h.check_for(&token, "billing").await);
    assert_eq!(billing.metadata["rule"], "billing");
    let (_, claims) = h.verify_minted(&billing.bearer(), "billing").await;
    assert_eq!(claims["scope"], "billing.read");
    let d = denial(&h.check_for(&token, "orders").await);
    assert_eq!(d.http_status, 403);
    assert_eq!(d.metadata["reason"], "no_rule");

    // The ephemeral signing key outlives the reload: earlier tokens still verify.
    h.verify_minted(&before, "orders").await;

    assert_eq!(h.metric(RELOADS, &OK).await, Some(1.0));
    assert_eq!(h.metric(RELOADS, &ERROR).await, Some(0.0));
    assert!(h.metric(LAST_OK_TIME, &[]).await.unwrap() > started_at);
    assert!(h.is_ready());
    assert_eq!(h.health(stsgate::api::readiness::AUTHZ_SERVICE).await, Some(SERVING));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_issuer_keeps_its_keys_so_a_down_idp_does_not_block_a_rule_change() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "billing.read"));
    assert_forbidden(&h.check_for(&token, "billing").await);
    let fetches = idp.jwks_fetches();

    idp.down();
    let yaml = Harness::builder(&idp).rules(BILLING_ONLY).yaml();
    h.reload_yaml(&yaml).await.expect("the issuer's settings did not change: its keys carry over");
    // A token never seen before validates with the carried-over keys.
    allowed(&h.check_for(&token, "billing").await);
    assert_eq!(idp.jwks_fetches(), fetches, "nothing was fetched");

    // A changed issuer entry is fetched again, and with the IdP down that fails.
    h.server().set_reload_timeout(Duration::from_millis(300));
    let changed = Harness::builder(&idp).rules(BILLING_ONLY).issuer_option("leeway: 10s").yaml();
    assert!(matches!(h.reload_yaml(&changed).await, Err(ReloadError::IssuerKeys { .. })));
    allowed(&h.check_for(&token, "billing").await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_cache_does_not_survive_a_reload() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let first = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_eq!(jti(&allowed(&h.check_for(&token, "orders").await).bearer()), jti(&first), "cached");
    assert_eq!(lifetime(&first), 120, "the default rule caps at 2m");
    assert!(h.server().engine().caches().minted_len() > 0);

    h.reload_yaml(&Harness::builder(&idp).rules(ORDERS_ONE_MINUTE).yaml()).await.expect("reload");
    assert_eq!(h.server().engine().caches().minted_len(), 0, "the new engine starts with empty caches");
    let after = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_ne!(jti(&after), jti(&first), "the same request is decided again");
    assert_eq!(lifetime(&after), 60, "under the new rule");
    // The new engine caches in turn.
    assert_eq!(jti(&allowed(&h.check_for(&token, "orders").await).bearer()), jti(&after));

    // Even an unchanged file starts from empty caches.
    h.reload_yaml(&Harness::builder(&idp).rules(ORDERS_ONE_MINUTE).yaml()).await.expect("reload");
    assert_ne!(jti(&allowed(&h.check_for(&token, "orders").await).bearer()), jti(&after));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_changes_nothing() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read billing.read"));
    let first = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_forbidden(&h.check_for(&token, "billing").await);
    let started_at = h.metric(LAST_OK_TIME, &[]).await.unwrap();

    // Each file would allow billing if any of it applied.
    let good = Harness::builder(&idp).rules(BILLING_ONLY).yaml();
    let broken: [(&str, String, &[&str]); 4] = [
        ("invalid YAML", format!("{good}bogus: [unclosed\n"), &["invalid configuration", "line"]),
        (
            "an unknown key",
            good.replace("ext_authz:\n", "ext_authz:\n  subject_headr: x-token\n"),
            &["`ext_authz.subject_headr`", "unknown field `subject_headr`"],
        ),
        (
            "two validation errors",
            good.replace("lifetime: 5m", "lifetime: 48h")
                .replace("audiences: [billing]", "audiences: [billing]\n      issuers: [https://nobody.test]"),
            &["2 problem(s)", "- tokens.lifetime: must be at most 24h", "- rules[0].match.issuers[0]:"],
        ),
        (
            "a missing key file",
            good.replace("ephemeral: true", "file: /nonexistent/stsgate-key.pem"),
            &["signing.keys[0]", "/nonexistent/stsgate-key.pem does not exist"],
        ),
    ];
    for (what, yaml, needles) in &broken {
        let err = h.reload_yaml(yaml).await.expect_err(what);
        assert!(matches!(err, ReloadError::Config(_)), "{what}: {err:?}");
        let msg = err.to_string();
        for needle in *needles {
            assert!(msg.contains(needle), "{what}: {needle:?} not in:\n{msg}");
        }
    }

    // The old configuration answers exactly as before, from its own cache.
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first);
    assert_forbidden(&h.check_for(&token, "billing").await);
    assert_eq!(h.metric(RELOADS, &ERROR).await, Some(broken.len() as f64));
    assert_eq!(h.metric(RELOADS, &OK).await, Some(0.0));
    assert_eq!(h.metric(LAST_OK, &[]).await, Some(0.0), "alertable: the last reload failed");
    assert_eq!(h.metric(LAST_OK_TIME, &[]).await, Some(started_at));
    assert!(h.is_ready());

    // Fixed, it applies.
    h.reload_yaml(&good).await.expect("reload");
    allowed(&h.check_for(&token, "billing").await);
    assert_eq!(h.metric(LAST_OK, &[]).await, Some(1.0));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_the_dev_idp_need_a_restart() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "billing.read"));

    // The harness binds ephemeral ports, but its file says the defaults.
    let moved =
        Harness::builder(&idp).rules(BILLING_ONLY).edit(|y| format!("listen:\n  grpc: 0.0.0.0:9192\n{y}")).yaml();
    let err = h.reload_yaml(&moved).await.expect_err("listen.grpc moved");
    assert!(matches!(err, ReloadError::RestartRequired(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "listen.grpc changed (0.0.0.0:9191 -> 0.0.0.0:9192): restart stsgate to move listeners"
    );
    let dev = Harness::builder(&idp).rules(BILLING_ONLY).edit(|y| format!("{y}dev_idp: {{}}\n")).yaml();
    let err = h.reload_yaml(&dev).await.expect_err("dev_idp added");
    assert!(err.to_string().starts_with("dev_idp changed: restart stsgate"), "{err}");
    // Nothing else in those files applied either.
    assert_forbidden(&h.check_for(&token, "billing").await);
    assert_eq!(h.metric(RELOADS, &ERROR).await, Some(2.0));

    // shutdown_grace is read at shutdown, so it may change.
    let grace =
        Harness::builder(&idp).rules(BILLING_ONLY).edit(|y| format!("listen:\n  shutdown_grace: 3s\n{y}")).yaml();
    h.reload_yaml(&grace).await.expect("shutdown_grace applies");
    assert_eq!(h.server().engine().cfg.listen.shutdown_grace.0, Duration::from_secs(3));
    allowed(&h.check_for(&token, "billing").await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_issuer_whose_keys_do_not_load_fails_the_reload_after_the_timeout() {
    let idp = MockIdp::start().await;
    let other = MockIdp::start_in(Mode::Unavailable).await;
    let h = Harness::start(&idp).await;
    let timeout = Duration::from_millis(700);
    h.server().set_reload_timeout(timeout);
    let token = idp.token(&idp.claims("alice", "orders.read billing.read"));
    let first = allowed(&h.check_for(&token, "orders").await).bearer();

    let trusted = format!(
        "- issuer: {}\n  discovery: true\n  algorithms: [RS256]\n- issuer: {}\n  jwks_url: {}\n  algorithms: [RS256]\n",
        idp.issuer,
        other.issuer,
        other.jwks_url()
    );
    let yaml = Harness::bare().trusted_issuers(&trusted).rules(BILLING_ONLY).yaml();
    let started = Instant::now();
    let err = h.reload_yaml(&yaml).await.expect_err("the new issuer answers 503");
    let took = started.elapsed();
    assert!(took >= timeout, "gave up after {took:?}, before the timeout");
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    assert!(matches!(err, ReloadError::IssuerKeys { .. }) && err.may_pass(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("1 trusted issuer(s) did not load within 700ms"), "{msg}");
    assert!(
        msg.contains(&format!("trusted_issuers[1] ({}): GET {} answered HTTP 503", other.issuer, other.jwks_url())),
        "{msg}"
    );
    assert!(other.jwks_fetches() >= 2, "fast failures are retried within the timeout");

    // Nothing changed.
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first);
    assert_forbidden(&h.check_for(&token, "billing").await);
    assert_eq!(h.server().engine().cfg.trusted_issuers.len(), 1);
    assert!(h.is_ready());
    assert_eq!(h.metric(RELOADS, &ERROR).await, Some(1.0));

    // The same file loads once the IdP answers, and its tokens are accepted.
    other.up();
    h.reload_yaml(&yaml).await.expect("reload");
    let from_other = other.token(&other.claims("bob", "billing.read"));
    assert_eq!(allowed(&h.check_for(&from_other, "billing").await).metadata["subject_issuer"], other.issuer);
    h.shutdown().await;
}

/// An ES256 private key as PKCS#8 PEM, as `openssl genpkey` writes it.
fn es256_pem() -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_pkcs8v1().unwrap().as_ref().to_vec()))
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_change_shows_in_the_jwks_and_in_new_tokens() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let dir = TempDir::new("reload-keys");
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let old = allowed(&h.check_for(&token, "orders").await).bearer();
    let jwks_before = h.get_json("/.well-known/jwks.json").await;
    assert_eq!(kids(&jwks_before), [STS_KID]);

    // Step 1 and 3 of a rotation at once: a new key from a file signs, the old one stays published.
    let new_key = dir.write("sts-2.pem", es256_pem());
    let ephemeral = "signing:\n  keys:\n    - kid: sts-es256\n      alg: ES256\n      ephemeral: true\n";
    let rotated = format!(
        "signing:\n  active: sts-2\n  keys:\n    - {{ kid: sts-2, alg: ES256, file: {} }}\n    \
         - {{ kid: {STS_KID}, alg: ES256, ephemeral: true }}\n",
        new_key.display()
    );
    let yaml = Harness::builder(&idp).edit(move |y| y.replace(ephemeral, &rotated)).yaml();
    assert!(yaml.contains("active: sts-2"), "{yaml}");
    let done = h.reload_yaml(&yaml).await.expect("reload");
    assert_eq!((done.active_kid.as_str(), done.signing_keys), ("sts-2", 2));

    let jwks = h.get_json("/.well-known/jwks.json").await;
    assert_eq!(kids(&jwks), ["sts-2", STS_KID]);
    assert_eq!(jwks["keys"][1], jwks_before["keys"][0], "the ephemeral key is kept, not regenerated");
    let new = allowed(&h.check_for(&token, "orders").await).bearer();
    let (header, _) = h.verify_minted(&new, "orders").await;
    assert_eq!(header.kid.as_deref(), Some("sts-2"));
    h.verify_minted(&old, "orders").await;

    // A key file that is not a key: refused, the JWKS stays as it is.
    let junk = dir.write("sts-3.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let broken = yaml.replace("active: sts-2", "active: sts-3").replace(
        &format!("    - {{ kid: {STS_KID}"),
        &format!("    - {{ kid: sts-3, alg: ES256, file: {} }}\n    - {{ kid: {STS_KID}", junk.display()),
    );
    let err = h.reload_yaml(&broken).await.expect_err("junk key");
    assert!(matches!(err, ReloadError::SigningKeys(_)), "{err:?}");
    assert!(err.to_string().contains("signing key \"sts-3\""), "{err}");
    assert!(!err.to_string().contains("AAAA"), "no key material in errors: {err}");
    assert_eq!(h.get_json("/.well-known/jwks.json").await, jwks);

    // Retiring the old key removes it from the JWKS.
    let retired = yaml.replace(&format!("    - {{ kid: {STS_KID}, alg: ES256, ephemeral: true }}\n"), "");
    h.reload_yaml(&retired).await.expect("reload");
    assert_eq!(kids(&h.get_json("/.well-known/jwks.json").await), ["sts-2"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_issuer_moves_the_metadata_documents() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    assert_eq!(h.get("/tenant-b/.well-known/jwks.json").await.status(), 404);

    let yaml = Harness::builder(&idp)
        .edit(|y| y.replace(&format!("issuer: {STS_ISSUER}\n"), "issuer: https://sts.test/tenant-b\n"))
        .yaml();
    h.reload_yaml(&yaml).await.expect("reload");
    for path in ["/.well-known/oauth-authorization-server/tenant-b", "/tenant-b/.well-known/openid-configuration"] {
        assert_eq!(h.get_json(path).await["issuer"], "https://sts.test/tenant-b", "{path}");
    }
    assert_eq!(kids(&h.get_json("/tenant-b/.well-known/jwks.json").await), [STS_KID]);
    assert_eq!(h.http.post(h.url("/tenant-b/.well-known/jwks.json")).send().await.unwrap().status(), 405);
    let token = allowed(&h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await).bearer();
    let (_, claims) = verify_with_jwks(
        &h.http,
        &h.url("/tenant-b/.well-known/jwks.json"),
        "https://sts.test/tenant-b",
        &token,
        "api://x",
    )
    .await;
    assert_eq!(claims["iss"], "https://sts.test/tenant-b");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_current_engine() {
    let down = MockIdp::start_in(Mode::Unavailable).await;
    let up = MockIdp::start().await;
    let h = Harness::builder(&down).no_wait().start().await;
    assert!(!h.is_ready());
    assert_eq!(h.health("").await, Some(NOT_SERVING));
    let resp = h.get("/readyz").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["issuers_not_loaded"], 1);

    // The new configuration trusts an IdP that answers: ready at once.
    h.reload_yaml(&Harness::builder(&up).yaml()).await.expect("reload");
    assert!(h.is_ready());
    assert_eq!(h.get("/readyz").await.status(), 200);
    let hr = &h;
    eventually("gRPC health SERVING", || async move {
        hr.health(stsgate::api::readiness::AUTHZ_SERVICE).await == Some(SERVING)
    })
    .await;
    assert_eq!(h.health("").await, Some(SERVING));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_issuers_are_released_after_a_reload() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let old = h.server().engine().issuers.get(&idp.issuer).unwrap().clone();
    // The issuer map and its refresh task hold it besides us.
    assert!(Arc::strong_count(&old) > 2, "{}", Arc::strong_count(&old));

    h.reload_yaml(&Harness::builder(&idp).yaml()).await.expect("reload");
    let new = h.server().engine().issuers.get(&idp.issuer).unwrap().clone();
    assert!(!Arc::ptr_eq(&old, &new));
    // No refresh task and no engine keeps the old issuer alive.
    eventually("the old issuer is released", || {
        let n = Arc::strong_count(&old);
        async move { n == 1 }
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_during_reloads_are_answered_by_one_engine_or_the_other() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (mut client, stop, answered) = (h.authz(), stop.clone(), answered.clone());
        let bearer = format!("Bearer {token}");
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = check_request(&[("authorization", &bearer)], &[("audience", "orders")], "api.test", "/");
                let resp = client.check(req).await.expect("a CheckResponse").into_inner();
                let minted = allowed(&resp).bearer();
                assert!([60, 120].contains(&lifetime(&minted)), "a token of one rule or the other");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for rules in [ORDERS_ONE_MINUTE, DEFAULT_RULES, ORDERS_ONE_MINUTE, DEFAULT_RULES] {
        h.reload_yaml(&Harness::builder(&idp).rules(rules).yaml()).await.expect("reload");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("no client saw a failure");
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// The real binary: SIGHUP and --watch-config
// ---------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");

/// A running `stsgate serve --config <file>`.
struct Serve {
    child: ChildGuard,
    grpc: String,
    http: String,
    config: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The configuration file for `idp` with these rules, on this instance's ports.
    fn yaml(&self, idp: &MockIdp, rules: &str) -> String {
        serve_yaml(idp, rules, &self.grpc, &self.http)
    }

    /// Replaces the file the way a ConfigMap update does: new content, new inode.
    fn rewrite(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    fn assert_running(&mut self) {
        assert!(self.child.exited().is_none(), "stsgate exited:\n{}", self.log());
    }

    async fn check_for(&self, token: &str, audience: &str) -> stsgate::pb::envoy::service::auth::v3::CheckResponse {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap();
        let mut client = stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
        let bearer = format!("Bearer {token}");
        let req = check_request(&[("authorization", &bearer)], &[("audience", audience)], "api.test", "/");
        client.check(req).await.expect("a CheckResponse").into_inner()
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.http)).await.unwrap().text().await.unwrap();
        metric_value(&text, name, labels)
    }

    /// SIGTERM, and a clean exit.
    async fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "exit after SIGTERM: {status}\n{}", self.log());
    }
}

fn serve_yaml(idp: &MockIdp, rules: &str, grpc: &str, http: &str) -> String {
    let listen = format!("listen:\n  grpc: {grpc}\n  http: {http}\n");
    Harness::builder(idp).rules(rules).edit(move |y| format!("{listen}{y}")).yaml()
}

async fn start_serve(idp: &MockIdp, rules: &str, extra: &[&str]) -> Serve {
    init_logging();
    let dir = TempDir::new("reload-serve");
    let log = dir.path().join("stderr.log");
    let client = reqwest::Client::new();
    // A free port can be taken between our check and stsgate's bind: retry then.
    for _attempt in 0..3 {
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let config = dir.write("config.yaml", serve_yaml(idp, rules, &grpc, &http));
        let mut child = ChildGuard::spawn(
            "stsgate serve",
            Command::new(BIN)
                .args(["serve", "--config", config.to_str().unwrap()])
                .args(extra)
                .env("RUST_LOG", "info")
                .env_remove("STSGATE_CONFIG")
                .env_remove("STSGATE_LOG_FORMAT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.exited() {
                eprintln!(
                    "stsgate serve exited early ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                break;
            }
            let ready = client.get(format!("http://{http}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Serve { child, grpc, http, config, log, _dir: dir };
            }
            assert!(
                Instant::now() < deadline,
                "stsgate serve not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("stsgate serve did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_serve() {
    let idp = MockIdp::start().await;
    let mut s = start_serve(&idp, DEFAULT_RULES, &[]).await;
    let token = idp.token(&idp.claims("alice", "orders.read billing.read"));
    assert_forbidden(&s.check_for(&token, "billing").await);

    // A broken file: refused, logged with its key path, the process keeps serving the old rules.
    let good = s.yaml(&idp, BILLING_ONLY);
    s.rewrite(&good.replace("lifetime: 5m", "lifetime: 48h"));
    s.signal("HUP");
    let (sr, token_ref) = (&s, &token);
    eventually("the failed reload is logged", || async move { sr.log().contains("configuration reload failed") }).await;
    let log = s.log();
    assert!(
        log.contains("previous configuration stays in effect") && log.contains("tokens.lifetime: must be at most 24h"),
        "{log}"
    );
    s.assert_running();
    assert_forbidden(&s.check_for(&token, "billing").await);
    allowed(&s.check_for(&token, "orders").await);
    assert_eq!(s.metric(RELOADS, &ERROR).await, Some(1.0));

    // Fixed: the next SIGHUP applies it.
    s.rewrite(&good);
    s.signal("HUP");
    let sr = &s;
    eventually("billing is allowed after SIGHUP", || async move {
        rpc_code(&sr.check_for(token_ref, "billing").await) == RPC_OK
    })
    .await;
    assert_forbidden(&s.check_for(&token, "orders").await);
    s.assert_running();
    let log = s.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains(&short_hash(good.as_bytes())), "the log names the config hash:\n{log}");
    assert_eq!(s.metric(RELOADS, &OK).await, Some(1.0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_a_changed_file_without_a_signal() {
    let idp = MockIdp::start().await;
    let s = start_serve(&idp, DEFAULT_RULES, &["--watch-config", "200ms"]).await;
    let token = idp.token(&idp.claims("alice", "orders.read billing.read"));
    assert_forbidden(&s.check_for(&token, "billing").await);

    // The same bytes in a new file (a ConfigMap re-sync) are no change.
    s.rewrite(&s.yaml(&idp, DEFAULT_RULES));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.metric(RELOADS, &OK).await, Some(0.0), "{}", s.log());

    s.rewrite(&s.yaml(&idp, BILLING_ONLY));
    let (sr, token_ref) = (&s, &token);
    eventually("billing is allowed after the file changed", || async move {
        rpc_code(&sr.check_for(token_ref, "billing").await) == RPC_OK
    })
    .await;
    assert_eq!(s.metric(RELOADS, &OK).await, Some(1.0));
    assert!(s.log().contains("configuration changed: reloading"), "{}", s.log());
    s.stop().await;
}
