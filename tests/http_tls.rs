//! TLS on the HTTP listener (`listen.http_tls`, issue #16 part 4) and RFC 8705
//! `tls_client_auth` at the token endpoint (issue #12), from the client
//! certificate of the TLS handshake or from the `x-forwarded-client-cert` of
//! a trusted proxy (`listen.http_client_cert`). The PKI is the committed one
//! of `tests/fixtures/mtls` (its `gen.sh` says what each file is).

#[path = "e2e/mtls.rs"]
mod mtls;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use stsgate::config::Config;
use stsgate::runtime::server::Server;
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const XFCC: &str = "x-forwarded-client-cert";

/// One client per matcher: `web` by URI SAN, `orders` by subject DN,
/// `local` by DNS SAN (every workload certificate of the fixtures holds
/// DNS:localhost), `elsewhere` by a DNS SAN no certificate holds, and a
/// secret client.
const CLIENTS: &str = r#"
clients:
  - { client_id: web, auth: tls_client_auth, tls_client_auth_san_uri: "spiffe://cluster.local/ns/shop/sa/web" }
  - { client_id: orders, auth: tls_client_auth, tls_client_auth_subject_dn: "CN=orders,O=stsgate tests" }
  - { client_id: local, auth: tls_client_auth, tls_client_auth_san_dns: LOCALHOST }
  - { client_id: elsewhere, auth: tls_client_auth, tls_client_auth_san_dns: web.example.org }
  - client_id: poster
    auth: client_secret_post
    secret_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1nEzoCk0F1bUc7gOX0dKLMRS+m+rZwFlgtNvgUGugAg"
"#;

/// A running stsgate with its HTTP listener configured by `listen` (lines
/// under `listen:`), its scratch directory and the mock IdP.
struct Sts {
    server: Option<Server>,
    http: SocketAddr,
    idp: MockIdp,
    _dir: TempDir,
}

impl Sts {
    async fn start(listen: &str, clients: &str) -> Sts {
        Sts::start_in(TempDir::new("http-tls"), listen, clients).await
    }

    async fn start_in(dir: TempDir, listen: &str, clients: &str) -> Sts {
        init_logging();
        let idp = MockIdp::start().await;
        let listen: String = listen.lines().map(|l| format!("  {l}\n")).collect();
        let clients = clients.to_owned();
        let mut builder = Harness::builder(&idp).edit(move |y| format!("{y}{clients}"));
        let yaml = format!("{}listen:\n{listen}", builder.yaml());
        let server = start_server(&yaml, loopback_listeners().await).await;
        Sts { http: server.http_addr, server: Some(server), idp, _dir: dir }
    }

    fn https(&self, path: &str) -> String {
        format!("https://{}{path}", self.http)
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `POST /token` exchanging a fresh subject token for `orders`, with
    /// `client_id` (if any), by `client`, to `url`; the status and body.
    async fn token(&self, client: &reqwest::Client, url: &str, client_id: Option<&str>) -> (u16, Value) {
        self.token_with(client.post(url), client_id).await
    }

    async fn token_with(&self, req: reqwest::RequestBuilder, client_id: Option<&str>) -> (u16, Value) {
        let subject = self.idp.token(&self.idp.claims("alice", "orders.read"));
        let mut form = vec![
            ("grant_type", GRANT),
            ("subject_token", &subject),
            ("subject_token_type", AT),
            ("audience", "orders"),
        ];
        if let Some(id) = client_id {
            form.push(("client_id", id));
        }
        let resp = req.form(&form).send().await.unwrap_or_else(|e| panic!("POST /token: {}", mtls::error_chain(&e)));
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }

    async fn metric(&self, client: &reqwest::Client, url: &str, name: &str, labels: &[&str]) -> Option<f64> {
        let text = client.get(url).send().await.ok()?.text().await.ok()?;
        metric_value(&text, name, labels)
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            tokio::time::timeout(WAIT, s.shutdown()).await.expect("shutdown in time");
        }
    }
}

/// `listen.http_tls` with the fixture server certificate and, when
/// `client_ca`, the test CA for client certificates.
fn http_tls(client_ca: bool, extra: &str) -> String {
    let mut s =
        format!("http_tls:\n  cert: {}\n  key: {}\n", mtls::cert_path("server.pem"), mtls::cert_path("server-key.pem"));
    if client_ca {
        s.push_str(&format!("  client_ca: {}\n", mtls::cert_path("ca.pem")));
    }
    for line in extra.lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

fn assert_invalid_client(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    assert_eq!(body["error_description"], "client authentication failed", "{what}: says nothing more: {body}");
}

fn assert_minted_for(status: u16, body: &Value, client_id: &str) {
    assert_eq!(status, 200, "{client_id}: {body}");
    let token = body["access_token"].as_str().unwrap_or_else(|| panic!("no access_token: {body}"));
    let payload = token.split('.').nth(1).expect("a compact JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["client_id"], client_id, "the minted token names the authenticated client");
}

/// A rustls client trusting the test CA, presenting `identity` (a fixture
/// base name) or nothing; from the crate's own rustls, to see what the
/// handshake did.
fn tls_config(identity: Option<&str>) -> Arc<ClientConfig> {
    stsgate::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&mtls::fixture("ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(name) => {
            let chain = CertificateDer::pem_slice_iter(&mtls::fixture(&format!("{name}.pem")))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&mtls::fixture(&format!("{name}-key.pem"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The leaf certificate a new handshake with `addr` is served.
async fn served_certificate(addr: SocketAddr) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = tokio_rustls::TlsConnector::from(tls_config(None)).connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of_fixture(name: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(&mtls::fixture(name)).next().unwrap().unwrap().to_vec()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn documents_and_probes_are_served_over_tls_without_a_client_certificate() {
    let sts = Sts::start(&http_tls(true, ""), CLIENTS).await;
    let anonymous = mtls::client(None);
    for path in ["/readyz", "/healthz", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server"] {
        let resp = anonymous.get(sts.https(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), 200, "GET {path} over TLS, no client certificate");
    }
    let jwks: Value = anonymous.get(sts.https("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], STS_KID);
    // HTTP/2 and HTTP/1.1 are offered (ALPN).
    for (offer, want) in [(vec![b"h2".to_vec(), b"http/1.1".to_vec()], "h2"), (vec![b"http/1.1".to_vec()], "http/1.1")]
    {
        let mut config = (*tls_config(None)).clone();
        config.alpn_protocols = offer;
        let tcp = TcpStream::connect(sts.http).await.unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want.as_bytes()));
    }

    // The metadata lists exactly the configured methods, and says tokens are
    // not bound to the certificate.
    let meta: Value =
        anonymous.get(sts.https("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_post", "tls_client_auth"])
    );
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], false);
    assert!(meta.get("mtls_endpoint_aliases").is_none(), "{meta}");

    // Plaintext on the TLS port is no HTTP answer.
    let plain = http_client_plain().get(sts.http("/readyz")).send().await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status() == 400), "plaintext answered {plain:?}");
    sts.shutdown().await;
}

fn http_client_plain() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

#[tokio::test]
async fn tls_client_auth_right_and_wrong() {
    let sts = Sts::start(&http_tls(true, ""), CLIENTS).await;
    let token = sts.https("/token");
    let (web, orders, intruder, anonymous) =
        (mtls::client(Some("web")), mtls::client(Some("orders")), mtls::client(Some("intruder")), mtls::client(None));

    // Right: each matcher.
    let (status, body) = sts.token(&web, &token, Some("web")).await;
    assert_minted_for(status, &body, "web");
    let (status, body) = sts.token(&orders, &token, Some("orders")).await;
    assert_minted_for(status, &body, "orders");
    let (status, body) = sts.token(&orders, &token, Some("local")).await;
    assert_minted_for(status, &body, "local");

    // Wrong: no certificate, another client's certificate, a certificate
    // without the SAN, an unknown or missing client_id, a certificate for a
    // client of another method.
    for (client, client_id, what) in [
        (&anonymous, Some("web"), "no client certificate"),
        (&orders, Some("web"), "orders's certificate for web"),
        (&web, Some("orders"), "web's certificate for orders (subject CN=web)"),
        (&intruder, Some("web"), "another URI SAN"),
        (&intruder, Some("local"), "no DNS SAN localhost"),
        (&web, Some("elsewhere"), "not the configured DNS SAN"),
        (&web, Some("nobody"), "unknown client_id"),
        (&web, Some("poster"), "a client_secret_post client with a certificate"),
    ] {
        let (status, body) = sts.token(client, &token, client_id).await;
        assert_invalid_client(status, &body, what);
    }
    // No client_id: no client, and unauthenticated requests are not served.
    let (status, body) = sts.token(&web, &token, None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    let metrics = sts.https("/metrics");
    let failures = "stsgate_client_auth_failures_total";
    let mismatch = sts.metric(&anonymous, &metrics, failures, &["reason=\"client_certificate_mismatch\""]).await;
    assert_eq!(mismatch, Some(5.0), "orders-for-web, web-for-orders and 3 SANs");
    let none = sts.metric(&anonymous, &metrics, failures, &["reason=\"no_client_certificate\""]).await;
    assert_eq!(none, Some(1.0));

    // A certificate from another CA fails the handshake, counted.
    let rogue = mtls::client(Some("rogue"));
    let err = rogue.get(sts.https("/readyz")).send().await.expect_err("a rogue certificate is refused");
    assert!(format!("{err:?}").contains("UnknownCA"), "the server names the reason: {err:?}");
    let refused = sts
        .metric(
            &anonymous,
            &sts.https("/metrics"),
            "stsgate_connections_refused_total",
            &["listener=\"http\"", "reason=\"tls_handshake\""],
        )
        .await;
    assert!(refused.is_some_and(|n| n >= 1.0), "refused handshake counted: {refused:?}");
    sts.shutdown().await;
}

#[tokio::test]
async fn client_auth_required_refuses_connections_without_a_certificate() {
    let sts = Sts::start(&http_tls(true, "client_auth: required"), CLIENTS).await;
    let err = mtls::client(None).get(sts.https("/readyz")).send().await.expect_err("no certificate, no connection");
    assert!(err.is_connect() || err.is_request(), "{}", mtls::error_chain(&err));
    let web = mtls::client(Some("web"));
    assert_eq!(web.get(sts.https("/readyz")).send().await.unwrap().status(), 200);
    let (status, body) = sts.token(&web, &sts.https("/token"), Some("web")).await;
    assert_minted_for(status, &body, "web");
    sts.shutdown().await;
}

#[tokio::test]
async fn without_a_client_ca_no_certificate_is_asked_for_nor_believed() {
    // No client_ca: client certificates come from nowhere, so a
    // tls_client_auth client is a configuration error...
    let dir = TempDir::new("http-tls");
    let listen: String = http_tls(false, "").lines().map(|l| format!("  {l}\n")).collect();
    let yaml = format!(
        "issuer: https://sts.test\nsigning: {{ keys: [{{ kid: k, ephemeral: true }}] }}\n\
         trusted_issuers: [{{ issuer: https://idp.test, jwks_url: https://idp.test/jwks }}]\nlisten:\n{listen}{CLIENTS}"
    );
    let issues = Config::from_yaml_validated(&yaml).unwrap_err().to_string();
    assert!(issues.contains("clients[0].auth: tls_client_auth needs client certificates"), "{issues}");
    // ...and a server without one serves TLS to anyone, even a client
    // holding a certificate from another CA (it is not asked for).
    let sts = Sts::start_in(dir, &http_tls(false, ""), "").await;
    let rogue = mtls::client(Some("rogue"));
    assert_eq!(rogue.get(sts.https("/readyz")).send().await.unwrap().status(), 200);
    let (status, body) = sts.token(&mtls::client(Some("web")), &sts.https("/token"), None).await;
    assert_eq!(status, 200, "no clients: served unauthenticated, as before: {body}");
    sts.shutdown().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_handshakes() {
    let dir = TempDir::new("http-tls");
    let cert = dir.write("tls.crt", mtls::fixture("server.pem"));
    let key = dir.write("tls.key", mtls::fixture("server-key.pem"));
    let listen = format!(
        "http_tls:\n  cert: {}\n  key: {}\n  client_ca: {}\n  reload_interval: 1s\n",
        cert.display(),
        key.display(),
        mtls::cert_path("ca.pem")
    );
    let sts = Sts::start_in(dir, &listen, CLIENTS).await;
    assert_eq!(served_certificate(sts.http).await, der_of_fixture("server.pem"));
    let anonymous = mtls::client(None);
    let metrics = sts.https("/metrics");
    let expiry = sts.metric(&anonymous, &metrics, "stsgate_http_tls_certificate_expiry_timestamp_seconds", &[]).await;
    assert!(expiry.is_some_and(|t| t > now() as f64), "the served certificate's expiry is exported: {expiry:?}");

    // A key that does not go with the certificate: the old pair stays.
    std::fs::write(&cert, mtls::fixture("stsgate.pem")).unwrap();
    eventually_some("the bad pair reported", WAIT, || async {
        sts.metric(&anonymous, &metrics, "stsgate_http_tls_reloads_total", &["result=\"error\""])
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(served_certificate(sts.http).await, der_of_fixture("server.pem"), "the previous pair is still served");

    // The matching key: new handshakes get the new certificate.
    std::fs::write(&key, mtls::fixture("stsgate-key.pem")).unwrap();
    let started = Instant::now();
    eventually_some("the new certificate served", WAIT, || async {
        (served_certificate(sts.http).await == der_of_fixture("stsgate.pem")).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "picked up within a few reload intervals");
    let ok = sts.metric(&anonymous, &metrics, "stsgate_http_tls_reloads_total", &["result=\"ok\""]).await;
    assert_eq!(ok, Some(1.0));
    // Client authentication still works on the new certificate.
    let (status, body) = sts.token(&mtls::client(Some("web")), &sts.https("/token"), Some("web")).await;
    assert_minted_for(status, &body, "web");
    sts.shutdown().await;
}

#[tokio::test]
async fn the_tls_handshake_counts_within_the_handshake_timeout() {
    let listen = format!("handshake_timeout: 1s\nheader_read_timeout: 30s\nidle_timeout: 30s\n{}", http_tls(true, ""));
    let sts = Sts::start(&listen, CLIENTS).await;

    // Connected, and then nothing: no ClientHello.
    let mut silent = TcpStream::connect(sts.http).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("closed within 5s");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is closed: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());

    // A finished handshake and then no request: the same deadline.
    let tcp = TcpStream::connect(sts.http).await.unwrap();
    let started = Instant::now();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut tls = tokio_rustls::TlsConnector::from(tls_config(Some("web"))).connect(name, tcp).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.expect("closed within 5s");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is closed: {read:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "at the handshake deadline: {took:?}");

    let anonymous = mtls::client(None);
    let closed = sts
        .metric(
            &anonymous,
            &sts.https("/metrics"),
            "stsgate_connections_closed_total",
            &["listener=\"http\"", "reason=\"handshake_timeout\""],
        )
        .await;
    assert_eq!(closed, Some(2.0), "both counted");
    sts.shutdown().await;
}

/// `listen.http_client_cert` xfcc: only from the trusted peer (bound
/// here to 127.0.0.6, as Istio's sidecar connects from).
const XFCC_SOURCE: &str = "http_client_cert:\n  source: xfcc\n  xfcc_trusted_peers: [127.0.0.6/32]\n";

fn from_addr(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn xfcc_is_believed_from_the_trusted_peer_only() {
    let sts = Sts::start(XFCC_SOURCE, CLIENTS).await;
    let (proxy, stranger) = (from_addr([127, 0, 0, 6]), from_addr([127, 0, 0, 1]));
    let url = sts.http("/token");
    let by = "By=spiffe://cluster.local/ns/stsgate/sa/stsgate;Hash=0123";
    let web = format!("{by};Subject=\"CN=web,O=stsgate tests\";URI={WEB};DNS=localhost");
    let post = |client: &reqwest::Client, xfcc: &str| client.post(&url).header(XFCC, xfcc.to_owned());

    let (status, body) = sts.token_with(post(&proxy, &web), Some("web")).await;
    assert_minted_for(status, &body, "web");
    let orders = format!("{by};Subject=\"CN=orders,O=stsgate tests\";URI=spiffe://cluster.local/ns/shop/sa/orders");
    let (status, body) = sts.token_with(post(&proxy, &orders), Some("orders")).await;
    assert_minted_for(status, &body, "orders");
    // The whole certificate, URL-encoded PEM, as Envoy forwards it with `cert: true`.
    let pem: String =
        form_urlencoded::byte_serialize(&mtls::fixture("web.pem")).collect::<String>().replace('+', "%20");
    let (status, body) = sts.token_with(post(&proxy, &format!("{by};Cert=\"{pem}\"")), Some("web")).await;
    assert_minted_for(status, &body, "web");
    // APPEND_FORWARD: only the last element, the one the proxy added, counts.
    let forwarded = format!("URI={WEB},{by};URI=spiffe://cluster.local/ns/shop/sa/intruder");
    for (req, what) in [
        (post(&stranger, &web), "the right header from an untrusted peer"),
        (proxy.post(&url), "the trusted peer without the header"),
        (post(&proxy, &orders), "another client's certificate"),
        (post(&proxy, &forwarded), "an earlier element"),
        (post(&proxy, &format!("{by};Subject=\"not a name\"")), "an unreadable subject"),
        (post(&proxy, &web).header(XFCC, "URI=spiffe://x/y"), "two headers"),
        (post(&proxy, &format!("{by};Hash=abc")), "no names at all"),
    ] {
        let (status, body) = sts.token_with(req, Some("web")).await;
        assert_invalid_client(status, &body, what);
    }
    sts.shutdown().await;
}

#[tokio::test]
async fn client_certificate_settings_are_checked_with_key_paths() {
    let base = "issuer: https://sts.test\nsigning: { keys: [{ kid: k, ephemeral: true }] }\n\
                trusted_issuers: [{ issuer: https://idp.test, jwks_url: https://idp.test/jwks }]\n";
    for (listen, clients, want) in [
        (
            "listen: { http_tls: { cert: /c, key: /k, client_auth: required } }\n",
            "",
            "listen.http_tls.client_auth: required needs a client_ca to verify client certificates with",
        ),
        (
            "listen: { http_client_cert: { source: tls } }\n",
            "",
            "listen.http_client_cert.source: tls needs listen.http_tls with a client_ca",
        ),
        (
            "listen: { http_client_cert: { source: xfcc } }\n",
            "",
            "listen.http_client_cert.xfcc_trusted_peers: source xfcc needs the addresses",
        ),
        (
            "listen: { http_tls: { cert: /c, key: /k, client_ca: /ca, reload_interval: 0s } }\n",
            "",
            "listen.http_tls.reload_interval: must be between 1s and 1day",
        ),
        (
            "listen: { http_client_cert: { source: xfcc, xfcc_trusted_peers: [127.0.0.6] } }\n",
            "clients: [{ client_id: a, auth: tls_client_auth }]\n",
            "clients[0]: tls_client_auth needs exactly one of",
        ),
        (
            "listen: { http_client_cert: { source: xfcc, xfcc_trusted_peers: [127.0.0.6] } }\n",
            "clients: [{ client_id: a, auth: tls_client_auth, tls_client_auth_san_uri: spiffe://a/b, \
             tls_client_auth_san_dns: a.example }]\n",
            "clients[0]: tls_client_auth needs exactly one of",
        ),
        (
            "listen: { http_client_cert: { source: xfcc, xfcc_trusted_peers: [127.0.0.6] } }\n",
            "clients: [{ client_id: a, auth: tls_client_auth, tls_client_auth_subject_dn: \"no dn\" }]\n",
            "clients[0].tls_client_auth_subject_dn: is not an RFC 4514 distinguished name",
        ),
        (
            "",
            "clients: [{ client_id: a, auth: none, tls_client_auth_san_dns: a.example }]\n",
            "clients[0]: none does not use `tls_client_auth_*`",
        ),
    ] {
        let text = format!("{base}{listen}{clients}");
        let err = Config::from_yaml_validated(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{listen}{clients}: {err}");
    }
    let err =
        Config::from_yaml_str(&format!("{base}listen: {{ http_tls: {{ cert: /c, key: /k, client_auth: maybe }} }}\n"))
            .unwrap_err()
            .to_string();
    assert!(err.contains("listen.http_tls.client_auth"), "{err}");
}

#[test]
fn check_config_reads_the_http_tls_files() {
    let dir = TempDir::new("http-tls");
    let config = dir.write(
        "stsgate.yaml",
        format!(
            "issuer: https://sts.test\nsigning: {{ keys: [{{ kid: k, ephemeral: true }}] }}\n\
             trusted_issuers: [{{ issuer: https://idp.test, jwks_url: https://idp.test/jwks }}]\n\
             rules: [{{ name: r, match: {{}}, grant: {{ scopes: [x] }} }}]\n\
             listen:\n  http_tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n",
            mtls::cert_path("server.pem"),
            mtls::cert_path("web-key.pem"),
            dir.join("missing-ca.pem").display()
        ),
    );
    let check =
        || std::process::Command::new(env!("CARGO_BIN_EXE_stsgate")).arg("check-config").arg(&config).output().unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listen.http_tls.client_ca: ") && stderr.contains("cannot read"), "{stderr}");
    let fixed = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&dir.join("missing-ca.pem").display().to_string(), &mtls::cert_path("ca.pem"));
    std::fs::write(&config, fixed).unwrap();
    let out = check();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen.http_tls.key: ") && stderr.contains("does not go with the certificate"),
        "{stderr}"
    );
}
