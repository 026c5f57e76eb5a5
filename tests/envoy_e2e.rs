//! End to end through a real Envoy 1.40: client → Envoy (ext_authz gRPC →
//! stsgate) → echo upstream. Envoy runs `envoy/e2e.yaml.tmpl` (the demo config
//! with an extra refused route) and, in one test, `envoy/demo.yaml` itself in
//! front of `stsgate dev`. Needs `scripts/install-tools.sh` (fails otherwise).

#[path = "e2e/mod.rs"]
mod e2e;

use std::process::{Command, Stdio};

use e2e::{
    ChildGuard, Echo, Envoy, Stsgate, TempDir, WAIT, bearer, echoed_header, eventually_some, http_client, jwt_claims,
    jwt_parts, verify_with_jwks,
};
use serde_json::Value;

/// stsgate + echo upstream + Envoy; dropped Envoy first, the scratch directory last.
struct Stack {
    envoy: Envoy,
    sts: Stsgate,
    echo: Echo,
    // Last, so that logs are still there when a failing test drops the rest.
    _dir: TempDir,
}

impl Stack {
    async fn start(label: &str) -> Stack {
        let dir = TempDir::new(label);
        let echo = Echo::start().await;
        let sts = Stsgate::start(&dir).await;
        let envoy = Envoy::start_e2e(&dir, sts.grpc, echo.addr).await;
        Stack { envoy, sts, echo, _dir: dir }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = http_client().get(self.envoy.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send().await.unwrap_or_else(|e| panic!("GET {path} through Envoy: {e}\n{}", self.envoy.log()))
    }

    /// A 200 from the echo upstream, as the JSON it echoed.
    async fn get_ok(&self, path: &str, token: &str) -> Value {
        let resp = self.get(path, Some(token)).await;
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}\n{}", self.sts.log_text());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("echo answer is not JSON ({e}): {body}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_token_reaches_upstream_with_the_routes_audience() {
    let s = Stack::start("envoy-ok").await;
    let subject = s.sts.mint("alice", "orders.read orders.write billing.read profile").await;
    assert_eq!(jwt_claims(&subject)["iss"], s.sts.idp_issuer());

    let mut auds = Vec::new();
    for (path, audience, scope, rule) in [
        ("/orders/1", "orders", "orders.read", "orders"),
        ("/billing/invoices?page=2", "billing", "billing.read", "billing"),
    ] {
        let echoed = s.get_ok(path, &subject).await;
        assert_eq!(echoed["path"], path);
        let auth =
            echoed_header(&echoed, "authorization").unwrap_or_else(|| panic!("no authorization upstream: {echoed}"));
        let minted = bearer(auth);
        assert_ne!(minted, subject, "the upstream got the original token");
        assert!(!echoed.to_string().contains(&subject), "the original token leaked upstream: {echoed}");

        let (header, claims) = jwt_parts(minted);
        assert_eq!(header["alg"], "ES256", "{header}");
        assert_eq!(header["kid"], "e2e-es256", "{header}");
        assert_eq!(header["typ"], "at+jwt", "{header}");
        assert_eq!(claims["iss"], s.sts.issuer(), "{claims}");
        assert_eq!(claims["sub"], "alice", "{claims}");
        assert_eq!(claims["aud"], audience, "{claims}");
        // Narrowed to what the route asked for, out of the subject's four scopes.
        assert_eq!(claims["scope"], scope, "{claims}");
        let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert!(exp > iat && exp - iat <= 300, "{claims}");
        assert_eq!(verify_with_jwks(&s.sts, minted, audience).await["sub"], "alice");
        auds.push(claims["aud"].clone());

        // ext_authz dynamic metadata in Envoy's access log.
        let line = s
            .envoy
            .wait_access_log(&[
                &format!("\"GET {path}\" 200"),
                "decision=exchange",
                "sub=alice",
                &format!("aud={audience} "),
                "actor=- ",
                &format!("scope=\"{scope}\""),
                &format!("rule={rule} "),
                &format!("jti={}", claims["jti"].as_str().unwrap()),
            ])
            .await;
        assert!(line.contains(&format!("upstream={}", s.echo.addr)), "{line}");
    }
    assert_ne!(auds[0], auds[1], "both routes minted the same audience");
    assert_eq!(s.echo.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_a_401_challenge_from_stsgate() {
    let s = Stack::start("envoy-401").await;
    let resp = s.get("/orders/1", None).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("realm=\"stsgate-e2e\""), "{challenge}");
    assert!(!challenge.contains("error="), "RFC 6750 §3: no error code without credentials: {challenge}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no bearer token"), "{body}");
    s.envoy.wait_access_log(&["\"GET /orders/1\" 401", "decision=denied", "reason=missing_token"]).await;
    assert_eq!(s.echo.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_401_invalid_token() {
    let s = Stack::start("envoy-invalid").await;
    let good = s.sts.mint("alice", "orders.read").await;
    // Same header and signature, payload changed: the signature no longer matches.
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims = jwt_claims(&good);
    claims["sub"] = "mallory".into();
    let payload = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims.to_string());
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    // A token stsgate minted itself is not a subject token (its issuer is not trusted).
    let echoed = s.get_ok("/orders/1", &good).await;
    let minted = bearer(echoed_header(&echoed, "authorization").unwrap()).to_owned();

    for bad in ["not-a-jwt", "a.b.c", forged.as_str(), minted.as_str()] {
        let resp = s.get("/orders/1", Some(bad)).await;
        assert_eq!(resp.status(), 401, "token {bad}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("realm=\"stsgate-e2e\""), "{challenge}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{body}");
    }
    s.envoy.wait_access_log(&["\"GET /orders/1\" 401", "decision=denied", "reason=invalid_token"]).await;
    assert_eq!(s.echo.hits(), 1, "only the valid request may reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_exchange_is_a_403_with_stsgate_body() {
    let s = Stack::start("envoy-403").await;
    let token = s.sts.mint("alice", "orders.read payments.read").await;
    // No rule allows audience `payments`.
    let resp = s.get("/payments/1", Some(&token)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_target", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("payments"), "{body}");
    // A rule exists for billing, but the subject has no billing scope.
    let resp = s.get("/billing/1", Some(&token)).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_scope", "{body}");
    s.envoy.wait_access_log(&["\"GET /payments/1\" 403", "decision=denied", "reason=no_rule"]).await;
    s.envoy.wait_access_log(&["\"GET /billing/1\" 403", "decision=denied", "reason=no_scope"]).await;
    assert_eq!(s.echo.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_while_stsgate_is_down_and_recovers_after_restart() {
    let mut s = Stack::start("envoy-down").await;
    let token = s.sts.mint("alice", "orders.read").await;
    s.get_ok("/orders/1", &token).await;
    let hits = s.echo.hits();

    s.sts.kill();
    for _ in 0..3 {
        let resp = s.get("/orders/1", Some(&token)).await;
        let status = resp.status();
        assert!(status == 403 || status.is_server_error(), "stsgate is down but Envoy answered {status}");
    }
    assert_eq!(s.echo.hits(), hits, "a request reached the upstream while stsgate was down");
    s.envoy.wait_access_log(&["\"GET /orders/1\" 403 UAEX", "decision=-"]).await;
    assert!(s.envoy.stat("http.ingress.ext_authz.error").await.unwrap_or(0) >= 3);

    s.sts.restart().await;
    // The dev IdP has a new key after a restart: ask it for a new token.
    let token = s.sts.mint("alice", "orders.read").await;
    let echoed = eventually_some("traffic through Envoy to recover", WAIT, || async {
        let resp = s.get("/orders/1", Some(&token)).await;
        if resp.status() == 200 { resp.json::<Value>().await.ok() } else { None }
    })
    .await;
    let claims = jwt_claims(bearer(echoed_header(&echoed, "authorization").unwrap()));
    assert_eq!(claims["aud"], "orders", "{claims}");
    assert_eq!(claims["iss"], s.sts.issuer(), "{claims}");
}

/// `envoy/demo.yaml` exactly as shipped (only its ports moved) in front of
/// `stsgate dev`, with the token from `stsgate dev-token` as in envoy/README.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_config_works_with_stsgate_dev() {
    let dir = TempDir::new("envoy-demo");
    let echo = Echo::start().await;
    let (grpc, http) = (e2e::free_port(), e2e::free_port());
    let _sts = ChildGuard::spawn(
        "stsgate dev",
        Command::new(e2e::stsgate_bin())
            .args(["dev", "--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stsgate.log")).unwrap()),
    );
    let client = http_client();
    eventually_some("stsgate dev to be ready", WAIT, || async {
        let r = client.get(format!("http://127.0.0.1:{http}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let mut demo = e2e::envoy_file("demo.yaml");
    for (from, to) in [(9901, 0), (10000, 0), (9191, grpc), (10001, echo.addr.port())] {
        let key = format!("port_value: {from}}}");
        assert_eq!(demo.matches(&key).count(), 1, "envoy/demo.yaml should contain `{key}` once");
        demo = demo.replace(&key, &format!("port_value: {to}}}"));
    }
    let envoy = Envoy::start(&dir, &demo).await;

    let out = Command::new(e2e::stsgate_bin())
        .args([
            "dev-token",
            "--sub",
            "alice",
            "--scope",
            "orders.read",
            "--idp",
            &format!("http://127.0.0.1:{http}/dev-idp"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "stsgate dev-token: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    for (path, audience) in [("/orders/1", "orders"), ("/billing/1", "billing"), ("/anything", "echo")] {
        let resp = client.get(envoy.url(path)).header("authorization", format!("Bearer {token}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}: {}", resp.text().await.unwrap_or_default());
        let echoed: Value = resp.json().await.unwrap();
        let claims = jwt_claims(bearer(echoed_header(&echoed, "authorization").unwrap()));
        assert_eq!(claims["aud"], audience, "{path}: {claims}");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], format!("http://127.0.0.1:{http}"));
    }
    envoy
        .wait_access_log(&[
            "\"GET /orders/1\" 200",
            "decision=exchange",
            "sub=alice",
            "aud=orders",
            "scope=\"orders.read\"",
        ])
        .await;
    let resp = client.get(envoy.url("/orders/1")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(echo.hits(), 3);
}

/// The shipped demo config is valid for the pinned Envoy.
#[test]
fn demo_config_validates() {
    let out = Command::new(e2e::envoy_bin())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(e2e::repo_root().join("envoy/demo.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate envoy/demo.yaml failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
