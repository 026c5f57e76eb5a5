//! stsgate's gRPC side driven by the real grpcurl 1.8.6 (plaintext, server
//! reflection): what an operator would type to poke at a running instance.
//! Needs `scripts/install-tools.sh` (fails otherwise).

#[path = "e2e/mod.rs"]
mod e2e;

use std::net::SocketAddr;
use std::process::Command;

use e2e::{Stsgate, TempDir, bearer, jwt_claims};
use serde_json::{Value, json};

/// Runs `grpcurl -plaintext <args...> <addr> <trailing...>` and returns stdout,
/// panicking with stderr on a non-zero exit.
fn grpcurl(addr: SocketAddr, args: &[&str], trailing: &[&str]) -> String {
    let out = Command::new(e2e::grpcurl_bin())
        .args(["-plaintext", "-connect-timeout", "5", "-max-time", "20"])
        .args(args)
        .arg(addr.to_string())
        .args(trailing)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} {addr} {trailing:?} exited with {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One `Check` through grpcurl, returning the CheckResponse as JSON.
fn check(addr: SocketAddr, request: &Value) -> Value {
    let out = grpcurl(addr, &["-d", &request.to_string()], &["envoy.service.auth.v3.Authorization/Check"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{out}"))
}

fn check_request(authorization: &str, audience: &str, scope: &str) -> Value {
    json!({
        "attributes": {
            "request": {"http": {
                "method": "GET",
                "host": "shop.example",
                "path": "/orders/1",
                "headers": {"authorization": authorization},
            }},
            "contextExtensions": {"audience": audience, "scope": scope},
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe_over_reflection() {
    let dir = TempDir::new("grpcurl-list");
    let sts = Stsgate::start(&dir).await;

    let services: Vec<String> = grpcurl(sts.grpc, &[], &["list"]).lines().map(str::to_owned).collect();
    for want in ["envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == want), "{want} not in `grpcurl list`: {services:?}");
    }

    let svc = grpcurl(sts.grpc, &[], &["describe", "envoy.service.auth.v3.Authorization"]);
    assert!(svc.contains("envoy.service.auth.v3.Authorization is a service"), "{svc}");
    assert!(
        svc.contains(
            "rpc Check ( .envoy.service.auth.v3.CheckRequest ) returns ( .envoy.service.auth.v3.CheckResponse )"
        ),
        "{svc}"
    );

    let msg = grpcurl(sts.grpc, &[], &["describe", "envoy.service.auth.v3.CheckRequest"]);
    assert!(msg.contains("envoy.service.auth.v3.CheckRequest is a message"), "{msg}");
    assert!(msg.contains(".envoy.service.auth.v3.AttributeContext attributes = 1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_allows_a_valid_token_and_denies_a_bad_one() {
    let dir = TempDir::new("grpcurl-check");
    let sts = Stsgate::start(&dir).await;
    let subject = sts.mint("alice", "orders.read orders.write").await;

    // Allowed: OK status, and a header mutation carrying the new token.
    let resp = check(sts.grpc, &check_request(&format!("Bearer {subject}"), "orders", "orders.read"));
    assert_eq!(resp["status"].get("code").and_then(Value::as_i64).unwrap_or(0), 0, "{resp:#}");
    let headers = resp["okResponse"]["headers"].as_array().unwrap_or_else(|| panic!("no okResponse.headers: {resp:#}"));
    let auth = headers
        .iter()
        .find(|h| h["header"]["key"] == "authorization")
        .unwrap_or_else(|| panic!("no authorization header in {resp:#}"));
    assert_eq!(auth["appendAction"], "OVERWRITE_IF_EXISTS_OR_ADD", "{auth}");
    let minted = bearer(auth["header"]["value"].as_str().unwrap());
    assert_ne!(minted, subject);
    let claims = jwt_claims(minted);
    assert_eq!(claims["iss"], sts.issuer(), "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], "orders", "{claims}");
    assert_eq!(claims["scope"], "orders.read", "{claims}");
    assert_eq!(resp["dynamicMetadata"]["sub"], "alice", "{resp:#}");
    assert_eq!(resp["dynamicMetadata"]["aud"], "orders", "{resp:#}");

    // Denied: a bad token is a 401 with a challenge, still a successful RPC.
    let resp = check(sts.grpc, &check_request("Bearer not.a.token", "orders", "orders.read"));
    assert_eq!(resp["status"]["code"], 16, "UNAUTHENTICATED expected: {resp:#}");
    let denied = &resp["deniedResponse"];
    assert_eq!(denied["status"]["code"], "Unauthorized", "{resp:#}");
    let challenge = denied["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["header"]["key"] == "www-authenticate")
        .unwrap_or_else(|| panic!("no www-authenticate in {resp:#}"));
    assert!(challenge["header"]["value"].as_str().unwrap().contains("error=\"invalid_token\""), "{challenge}");
    let body: Value = serde_json::from_str(denied["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_token", "{body}");

    // Denied by the rules: a valid token for an audience no rule allows.
    let resp = check(sts.grpc, &check_request(&format!("Bearer {subject}"), "payments", "payments.read"));
    assert_eq!(resp["status"]["code"], 7, "PERMISSION_DENIED expected: {resp:#}");
    assert_eq!(resp["deniedResponse"]["status"]["code"], "Forbidden", "{resp:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_is_serving() {
    let dir = TempDir::new("grpcurl-health");
    let sts = Stsgate::start(&dir).await;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let out =
            grpcurl(sts.grpc, &["-d", &json!({"service": service}).to_string()], &["grpc.health.v1.Health/Check"]);
        let resp: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        assert_eq!(resp["status"], "SERVING", "service {service:?}: {out}");
    }
}
