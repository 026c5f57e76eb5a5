//! Three hops through four real Envoys (1.40), every link mutual TLS with the
//! SPIFFE certificates of `tests/fixtures/mtls`:
//!
//! ```text
//! client ─HTTP─▶ gateway Envoy ─mTLS─▶ web's sidecar ─▶ web app ─mTLS (web)─▶ orders' sidecar ─▶ orders app
//!        ─mTLS (orders)─▶ payments' sidecar ─▶ payments (echo)
//! ```
//!
//! - the gateway (`envoy/chain-gateway.yaml.tmpl`) exchanges the user's IdP
//!   token for a token for `web`, nobody acting;
//! - web's sidecar (`envoy/chain-verify.yaml.tmpl`) only verifies that token
//!   against stsgate's JWKS (`jwt_authn`), like Istio's RequestAuthentication;
//! - orders' and payments' sidecars (`envoy/chain-sidecar.yaml.tmpl`) ask for
//!   their own audience with the mTLS peer as actor: stsgate re-exchanges the
//!   token it minted for the previous hop (`match.issuers: [self]`), checks that
//!   the peer is a workload of that token's audience (`workloads`), and nests
//!   the peer into `act`;
//! - the apps (`envoy/forward.py`) call the next hop with their own workload
//!   certificate and pass on the `authorization` header they received.
//!
//! Every Envoy calls stsgate's gRPC listener over mutual TLS (`listen.grpc_tls`)
//! with a caller certificate of its own, and `ext_authz.callers` lets each ask
//! for one audience only. Needs `scripts/install-tools.sh` (fails otherwise).

#[path = "e2e/mod.rs"]
mod e2e;
#[path = "e2e/mtls.rs"]
mod mtls;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{ChildGuard, Echo, Envoy, Stsgate, TempDir, WAIT, bearer, echoed_header, http_client, verify_with_jwks};
use mtls::{Transport, cert_path, grpcurl_check};
use serde_json::{Value, json};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const BILLING: &str = "spiffe://cluster.local/ns/shop/sa/billing";
const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const ORDERS_SIDECAR: &str = "spiffe://cluster.local/ns/shop/sa/orders-sidecar";
const PAYMENTS_SIDECAR: &str = "spiffe://cluster.local/ns/shop/sa/payments-sidecar";

/// The user's scopes at the IdP; each hop keeps only what its rule grants.
const USER_SCOPES: &str = "profile orders.read orders.write payments.charge";

/// stsgate for the chain: mutual TLS on the gRPC listener, one Check caller
/// per Envoy, the workloads that own each audience, and one rule per hop.
/// The user's IdP is the built-in dev IdP (as in the other e2e tests).
fn chain_config(grpc_port: u16, http_port: u16) -> String {
    let (cert, key, ca) = (cert_path("stsgate.pem"), cert_path("stsgate-key.pem"), cert_path("ca.pem"));
    let idp = format!("http://127.0.0.1:{http_port}/dev-idp");
    let aud = e2e::IDP_AUDIENCE;
    format!(
        r#"listen:
  grpc: 127.0.0.1:{grpc_port}
  http: 127.0.0.1:{http_port}
  shutdown_grace: 1s
  grpc_tls:
    cert: {cert}
    key: {key}
    client_ca: {ca}
issuer: http://127.0.0.1:{http_port}
signing:
  keys:
    - kid: chain-es256
      alg: ES256
      ephemeral: true
tokens:
  lifetime: 5m
trusted_issuers:
  - issuer: {idp}
    discovery: true
    algorithms: [RS256]
    audiences: [{aud}]
    leeway: 5s
    refresh_interval: 10s
    unknown_kid_refetch_interval: 1s
    fetch_timeout: 2s
dev_idp:
  path: /dev-idp
  audience: {aud}
# Who a token stsgate minted for an audience was issued to: only they may
# present it for re-exchange.
workloads:
  - audience: web
    spiffe: ["{WEB}"]
  - audience: orders
    spiffe: ["{ORDERS}"]
  - audience: payments
    spiffe: ["{PAYMENTS}"]
ext_authz:
  realm: stsgate-chain
  dynamic_metadata: [decision, rule, sub, aud, actor, scope, jti]
  caller_identity: mtls
  callers:
    # The gateway's clients have no mesh identity: nothing it reports about
    # them is an actor.
    - identity: "{GATEWAY}"
      audiences: [web]
      source_principal: false
    - identity: "{ORDERS_SIDECAR}"
      audiences: [orders]
      source_principal: true
    - identity: "{PAYMENTS_SIDECAR}"
      audiences: [payments]
      source_principal: true
rules:
  - name: users-enter-at-the-gateway
    match:
      issuers: ["{idp}"]
      audiences: [web]
    grant:
      scopes: ["orders.*", "payments.*"]
      max_lifetime: 2m
  - name: shop-calls-orders
    match:
      issuers: [self]
      audiences: [orders]
      actor: {{ spiffe: ["{WEB}", "{PAYMENTS}"] }}
    grant:
      outcome: delegation
      scopes: ["orders.*", "payments.*"]
      max_chain_depth: 2
  - name: shop-calls-payments
    match:
      issuers: [self]
      audiences: [payments]
      actor: {{ spiffe: ["{ORDERS}", "{BILLING}"] }}
    grant:
      outcome: delegation
      scopes: ["payments.*"]
      max_chain_depth: 2
"#
    )
}

// ---------------------------------------------------------------------------
// The apps

/// `envoy/forward.py` running as workload `name`, calling `next` (a sidecar
/// that must present `next_spiffe`) with its own workload certificate.
struct App {
    addr: SocketAddr,
    log: PathBuf,
    _child: ChildGuard,
}

impl App {
    async fn start(dir: &TempDir, name: &str, next: SocketAddr, next_spiffe: &str) -> App {
        let port_file = dir.join(&format!("{name}.port"));
        let log = dir.join(&format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = ChildGuard::spawn(
            name,
            Command::new(&python)
                .arg(e2e::repo_root().join("envoy").join("forward.py"))
                .args(["--name", name, "--listen", "127.0.0.1:0"])
                .arg("--port-file")
                .arg(&port_file)
                .args(["--next", &format!("https://{next}"), "--next-spiffe", next_spiffe])
                .args(["--cert", &cert_path(&format!("{name}.pem")), "--key", &cert_path(&format!("{name}-key.pem"))])
                .args(["--ca", &cert_path("ca.pem")])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        );
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            if let Some(status) = child.exited() {
                panic!("{name} ({python} envoy/forward.py) exited with {status}:\n{}", e2e::read_lossy(&log));
            }
            let port = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok());
            if let Some(addr) = port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))) {
                if TcpStream::connect(addr).is_ok() {
                    break addr;
                }
            }
            assert!(Instant::now() < deadline, "{name} did not listen within {WAIT:?}:\n{}", e2e::read_lossy(&log));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        App { addr, log, _child: child }
    }

    fn log(&self) -> String {
        e2e::tail(&self.log, 20)
    }
}

// ---------------------------------------------------------------------------
// The chain

/// `{{certs}}` of the Envoy templates.
fn certs() -> String {
    mtls::certs_dir().to_str().expect("UTF-8 path").to_owned()
}

/// Everything of the chain; dropped Envoys first, the scratch directory last.
struct Chain {
    gateway: Envoy,
    web_sidecar: Envoy,
    orders_sidecar: Envoy,
    payments_sidecar: Envoy,
    web: App,
    orders: App,
    payments: Echo,
    sts: Stsgate,
    _dir: TempDir,
}

impl Chain {
    /// Starts it from the end of the chain: each piece needs the address of
    /// the next one. Envoy and the apps bind port 0 and report their ports.
    async fn start(label: &str) -> Chain {
        let dir = TempDir::new(label);
        let sts = Stsgate::start_with(&dir, chain_config).await;
        let payments = Echo::start().await;
        let payments_sidecar = Chain::sidecar(&dir, &sts, "payments", payments.addr).await;
        let orders = App::start(&dir, "orders", payments_sidecar.addr, PAYMENTS).await;
        let orders_sidecar = Chain::sidecar(&dir, &sts, "orders", orders.addr).await;
        let web = App::start(&dir, "web", orders_sidecar.addr, ORDERS).await;
        let web_sidecar = Envoy::start(
            &dir,
            &e2e::render(
                &e2e::envoy_file("chain-verify.yaml.tmpl"),
                &[
                    ("certs", certs()),
                    ("stsgate_http_port", sts.http.port().to_string()),
                    ("app_port", web.addr.port().to_string()),
                ],
            ),
        )
        .await;
        let gateway = Envoy::start(
            &dir,
            &e2e::render(
                &e2e::envoy_file("chain-gateway.yaml.tmpl"),
                &[
                    ("certs", certs()),
                    ("stsgate_grpc_port", sts.grpc.port().to_string()),
                    ("web_sidecar_port", web_sidecar.addr.port().to_string()),
                ],
            ),
        )
        .await;
        Chain { gateway, web_sidecar, orders_sidecar, payments_sidecar, web, orders, payments, sts, _dir: dir }
    }

    /// The inbound sidecar of `workload`, exchanging for the audience of the same name.
    async fn sidecar(dir: &TempDir, sts: &Stsgate, workload: &str, app: SocketAddr) -> Envoy {
        let config = e2e::render(
            &e2e::envoy_file("chain-sidecar.yaml.tmpl"),
            &[
                ("workload", workload.to_owned()),
                ("audience", workload.to_owned()),
                ("certs", certs()),
                ("stsgate_grpc_port", sts.grpc.port().to_string()),
                ("app_port", app.port().to_string()),
            ],
        );
        Envoy::start(dir, &config).await
    }

    /// Logs of every part, for failure messages.
    fn logs(&self) -> String {
        let envoys = [
            ("gateway", &self.gateway),
            ("web's sidecar", &self.web_sidecar),
            ("orders' sidecar", &self.orders_sidecar),
            ("payments' sidecar", &self.payments_sidecar),
        ];
        let mut out = String::new();
        for (name, envoy) in envoys {
            out.push_str(&format!(
                "--- {name} access log ---\n{}--- {name} log ---\n{}\n",
                envoy.access_log(),
                envoy.log()
            ));
        }
        out.push_str(&format!("--- web app ---\n{}\n--- orders app ---\n{}\n", self.web.log(), self.orders.log()));
        out.push_str(&self.sts.log_text());
        out
    }

    /// GET through the gateway with the user's token: (status, JSON body).
    async fn through_gateway(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = http_client()
            .get(self.gateway.url(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the gateway: {}\n{}", mtls::error_chain(&e), self.logs()));
        answer(resp, path).await
    }

    /// GET straight to a sidecar as workload `identity` (its certificate), with `token`.
    async fn to_sidecar(&self, sidecar: &Envoy, identity: &str, path: &str, token: &str) -> (u16, Value) {
        let resp = mtls::client(Some(identity))
            .get(format!("https://{}{path}", sidecar.addr))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} as {identity}: {}\n{}", mtls::error_chain(&e), self.logs()));
        answer(resp, path).await
    }
}

async fn answer(resp: reqwest::Response, path: &str) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status}, not JSON ({e}): {body}"));
    (status, json)
}

/// The token an app received (`forward.py` joins a header's values; one expected).
fn app_token(answer: &Value) -> &str {
    bearer(
        answer["headers"]["authorization"].as_str().unwrap_or_else(|| panic!("no authorization received: {answer:#}")),
    )
}

fn scopes(claims: &Value) -> BTreeSet<&str> {
    claims["scope"].as_str().unwrap_or_default().split_whitespace().collect()
}

/// A stsgate denial as Envoy shows it downstream: `error` and `error_description`.
fn refusal(status: u16, body: &Value, what: &str) -> (String, String) {
    assert_eq!(status, 403, "{what}: {body:#}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{what}: not a stsgate refusal: {body:#}"));
    (error.to_owned(), body["error_description"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_token_crosses_three_hops_with_nested_actors() {
    let t0 = Instant::now();
    let c = Chain::start("chain").await;
    let started = t0.elapsed();
    let user = c.sts.mint("alice", USER_SCOPES).await;

    // --- The chain: client → gateway → web → orders → payments. -----------------
    let (status, web) = c.through_gateway("/checkout/42", &user).await;
    assert_eq!(status, 200, "{web:#}\n{}", c.logs());
    assert_eq!(web["app"], "web", "{web:#}");
    assert_eq!(web["downstream"]["peer"], ORDERS, "web reached orders' sidecar: {web:#}");
    let orders = &web["downstream"]["body"];
    assert_eq!(orders["app"], "orders", "{web:#}");
    assert_eq!(orders["downstream"]["peer"], PAYMENTS, "orders reached payments' sidecar: {web:#}");
    let payments = &orders["downstream"]["body"];
    assert_eq!(payments["path"], "/checkout/42", "{web:#}");
    assert_eq!(c.payments.hits(), 1);
    // The user's IdP token went no further than the gateway.
    assert!(!web.to_string().contains(&user), "the IdP token passed the gateway: {web:#}");

    // Hop 1 (gateway): a plain exchange for web, nobody acting.
    let web_token = app_token(&web);
    let claims = verify_with_jwks(&c.sts, web_token, "web").await;
    assert_eq!(claims["iss"], c.sts.issuer(), "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert!(claims.get("act").is_none(), "nobody acts at the gateway: {claims}");
    assert_eq!(scopes(&claims), BTreeSet::from(["orders.read", "orders.write", "payments.charge"]), "{claims}");

    // Hop 2 (orders' sidecar): web's token re-exchanged, web as the actor.
    let orders_token = app_token(orders);
    let claims = verify_with_jwks(&c.sts, orders_token, "orders").await;
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["act"], json!({ "sub": WEB }), "{claims}");
    assert_eq!(scopes(&claims), BTreeSet::from(["orders.read", "orders.write", "payments.charge"]), "{claims}");

    // Hop 3 (payments' sidecar): orders' token re-exchanged, orders nested over web.
    let payments_token = bearer(echoed_header(payments, "authorization").unwrap_or_else(|| panic!("{payments:#}")));
    let claims = verify_with_jwks(&c.sts, payments_token, "payments").await;
    assert_eq!(claims["iss"], c.sts.issuer(), "{claims}");
    assert_eq!(claims["sub"], "alice", "the user stays the subject: {claims}");
    assert_eq!(claims["aud"], "payments", "{claims}");
    assert_eq!(claims["act"], json!({ "sub": ORDERS, "act": { "sub": WEB } }), "{claims}");
    assert_eq!(claims["scope"], "payments.charge", "narrowed at every hop: {claims}");
    assert_eq!(claims["sub_id"]["iss"], c.sts.idp_issuer(), "the user's own IdP is remembered: {claims}");

    // Each Envoy saw the peer it should, and stsgate said why.
    c.gateway
        .wait_access_log(&[
            "gateway \"GET /checkout/42\" 200",
            "decision=exchange",
            "aud=web ",
            "rule=users-enter-at-the-gateway ",
        ])
        .await;
    c.web_sidecar
        .wait_access_log(&[
            "web \"GET /checkout/42\" 200",
            &format!("peer_uri_san={GATEWAY} "),
            "jwt_sub=alice ",
            "jwt_aud=web ",
        ])
        .await;
    c.orders_sidecar
        .wait_access_log(&[
            "orders \"GET /checkout/42\" 200",
            &format!("peer_uri_san={WEB} "),
            "decision=delegation",
            "aud=orders ",
            &format!("actor={WEB} "),
            "rule=shop-calls-orders ",
        ])
        .await;
    c.payments_sidecar
        .wait_access_log(&[
            "payments \"GET /checkout/42\" 200",
            &format!("peer_uri_san={ORDERS} "),
            "decision=delegation",
            "aud=payments ",
            &format!("actor={ORDERS} "),
            "rule=shop-calls-payments ",
        ])
        .await;
    let chain_done = t0.elapsed();

    // --- A token for orders, presented by billing: not its to present. ---------
    let (status, body) = c.to_sidecar(&c.payments_sidecar, "billing", "/charge/1", orders_token).await;
    let (error, description) = refusal(status, &body, "billing presenting orders' token");
    assert_eq!(error, "access_denied", "{body:#}");
    assert!(
        description.contains("issued to \"orders\"") && description.contains(BILLING),
        "the description names the mismatch: {body:#}"
    );
    c.payments_sidecar
        .wait_access_log(&[
            "payments \"GET /charge/1\" 403",
            &format!("peer_uri_san={BILLING} "),
            "reason=presenter_mismatch ",
        ])
        .await;

    // --- web skipping orders: its own token, but no rule lets web call payments.
    let (status, body) = c.to_sidecar(&c.payments_sidecar, "web", "/charge/2", web_token).await;
    refusal(status, &body, "web calling payments directly");
    c.payments_sidecar.wait_access_log(&["payments \"GET /charge/2\" 403", "reason=no_rule "]).await;

    // --- A fourth hop: payments calls orders with its token (act: orders → web);
    // delegating again would make the chain 3 deep, past max_chain_depth 2. ------
    let (status, body) = c.to_sidecar(&c.orders_sidecar, "payments", "/refund/3", payments_token).await;
    let (_, description) = refusal(status, &body, "a fourth hop");
    assert!(description.contains("chain"), "{body:#}");
    c.orders_sidecar
        .wait_access_log(&[
            "orders \"GET /refund/3\" 403",
            &format!("peer_uri_san={PAYMENTS} "),
            "reason=chain_too_deep ",
        ])
        .await;

    // --- The gateway asking for an audience its `callers` entry does not list. ---
    let (status, body) = c.through_gateway("/direct/payments/4", &user).await;
    let (_, description) = refusal(status, &body, "the gateway asking for payments");
    assert!(description.contains(GATEWAY) && description.contains("payments"), "{body:#}");
    c.gateway.wait_access_log(&["gateway \"GET /direct/payments/4\" 403", "reason=caller_audience "]).await;

    assert_eq!(c.payments.hits(), 1, "a refused request reached payments");
    let metrics =
        http_client().get(format!("http://{}/metrics", c.sts.http)).send().await.unwrap().text().await.unwrap();
    for reason in ["presenter_mismatch", "no_rule", "chain_too_deep", "caller_audience"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("stsgate_decisions_total{") && l.contains(&format!("reason=\"{reason}\""))),
            "no decision counted with reason {reason}:\n{metrics}"
        );
    }
    eprintln!("chain: started in {started:?}, three hops proven at {chain_done:?}, all refusals at {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Check callers, straight at stsgate's gRPC listener (the real grpcurl)

/// A Check as an Envoy sidecar would send it: `authorization`, the audience
/// context extension, and the mTLS peer when there is one.
fn check_request(token: &str, audience: &str, principal: Option<&str>) -> Value {
    let mut req = json!({
        "attributes": {
            "request": {"http": {
                "method": "GET",
                "host": "shop.internal",
                "path": "/orders/1",
                "headers": {"authorization": format!("Bearer {token}")},
            }},
            "contextExtensions": {"audience": audience, "actor": if principal.is_some() { "peer" } else { "none" }},
        }
    });
    if let Some(p) = principal {
        req["attributes"]["source"] = json!({ "principal": p });
    }
    req
}

/// The minted token of an OK CheckResponse.
fn minted(resp: &Value) -> &str {
    assert_eq!(resp["status"].get("code").and_then(Value::as_i64).unwrap_or(0), 0, "not OK: {resp:#}");
    let headers = resp["okResponse"]["headers"].as_array().unwrap_or_else(|| panic!("no okResponse.headers: {resp:#}"));
    let auth = headers.iter().find(|h| h["header"]["key"] == "authorization").unwrap_or_else(|| panic!("{resp:#}"));
    bearer(auth["header"]["value"].as_str().unwrap())
}

/// A 403 CheckResponse, with its metric label.
fn denied_reason(resp: &Value) -> &str {
    assert_eq!(resp["status"]["code"], 7, "PERMISSION_DENIED expected: {resp:#}");
    assert_eq!(resp["deniedResponse"]["status"]["code"], "Forbidden", "{resp:#}");
    assert!(resp.get("okResponse").is_none(), "{resp:#}");
    resp["dynamicMetadata"]["reason"].as_str().unwrap_or_else(|| panic!("no reason: {resp:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_check_callers_are_believed() {
    let dir = TempDir::new("chain-callers");
    let sts = Stsgate::start_with(&dir, chain_config).await;
    let grpcurl = e2e::grpcurl_bin();
    let check = |transport, request: &Value| grpcurl_check(&grpcurl, sts.grpc, transport, request);
    let user = sts.mint("alice", USER_SCOPES).await;

    // The gateway, as listed, gets web's token (as in the chain).
    let web_token = minted(&check(Transport::Tls("gateway"), &check_request(&user, "web", None)).unwrap()).to_owned();

    // The orders sidecar's request, forged: "web is my peer, give me orders' token".
    let forged = check_request(&web_token, "orders", Some(WEB));

    // Not over TLS at all, or over TLS without a client certificate: stsgate's
    // listener refuses the handshake, before any Check.
    for (transport, why) in [(Transport::Plaintext, "corrupt message"), (Transport::TlsNoCert, "no certificates")] {
        let out = check(transport, &forged).expect_err(&format!("{transport:?}: a Check was answered"));
        assert!(out.contains("Failed to dial"), "{transport:?}: {out}");
        let log = sts.log_text();
        assert!(
            log.lines().any(|l| l.contains("TLS handshake failed") && l.contains(why)),
            "{transport:?}: stsgate did not refuse the handshake ({why}):\n{log}"
        );
    }
    // Certificates of the mesh CA that no `callers` entry names: web's and
    // orders' own workload certificates, an intruder's.
    for name in ["web", "orders", "intruder"] {
        let resp = check(Transport::Tls(name), &forged).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(denied_reason(&resp), "caller_unknown", "{name}: {resp:#}");
        let body: Value = serde_json::from_str(resp["deniedResponse"]["body"].as_str().unwrap()).unwrap();
        assert!(body["error_description"].as_str().unwrap().contains("is not allowed to call Check"), "{body}");
    }
    // A listed caller asking for an audience its entry does not list.
    let resp = check(Transport::Tls("payments-sidecar"), &forged).unwrap();
    assert_eq!(denied_reason(&resp), "caller_audience", "{resp:#}");
    // A listed caller that is not believed about source.principal: the forged
    // principal is ignored, so what it gets is no delegation (here, for web,
    // the gateway's plain exchange: the token carries no `act`).
    let resp = check(Transport::Tls("gateway"), &check_request(&user, "web", Some(WEB))).unwrap();
    let claims = verify_with_jwks(&sts, minted(&resp), "web").await;
    assert!(claims.get("act").is_none(), "a delegation from the gateway's say-so: {claims}");
    assert!(resp["dynamicMetadata"].get("actor").is_none(), "{resp:#}");

    // The same forged request from orders' sidecar is what the chain does:
    // that caller is believed, and the token names web as the actor.
    let resp = check(Transport::Tls("orders-sidecar"), &forged).unwrap();
    let claims = verify_with_jwks(&sts, minted(&resp), "orders").await;
    assert_eq!(claims["act"], json!({ "sub": WEB }), "{claims}");
}
