//! The Check caller is believed only when it is authenticated (DESIGN.md,
//! "Who is believed about what"): mutual TLS on the gRPC listener
//! (`listen.grpc_tls`), or the `x-forwarded-client-cert` of stsgate's own
//! sidecar (`ext_authz.caller_identity: xfcc`), and then only for what its
//! `ext_authz.callers` entry allows. The PKI is made here, with rcgen.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint};

use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use stsgate::runtime::server::Server;
use support::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
/// The Envoy in front of `orders` (its sidecar): the Check caller.
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const INTRUDER: &str = "spiffe://cluster.local/ns/shop/sa/intruder";
const XFCC: &str = "x-forwarded-client-cert";

// ---------------------------------------------------------------------------
// stsgate, and clients of its gRPC listener
// ---------------------------------------------------------------------------

struct Sts {
    server: Option<Server>,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: TempDir,
}

impl Sts {
    /// stsgate with the harness configuration of `builder`, and `listen`
    /// (lines under `listen:`, unindented) added.
    async fn start(mut builder: HarnessBuilder, listen: &str, dir: TempDir) -> Sts {
        init_logging();
        let listen: String = listen.lines().map(|l| format!("  {l}\n")).collect();
        let yaml = format!("{}listen:\n{listen}", builder.yaml());
        let server = start_server(&yaml, loopback_listeners().await).await;
        Sts { grpc: server.grpc_addr, http: server.http_addr, server: Some(server), _dir: dir }
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.http)).await.unwrap().text().await.unwrap();
        metric_value(&text, name, labels)
    }

    /// Waits until the series counts at least one.
    async fn eventually_metric(&self, name: &str, labels: &[&str]) {
        eventually_some(&format!("{name} {labels:?} counted"), WAIT, || async {
            self.metric(name, labels).await.filter(|v| *v >= 1.0).map(|_| ())
        })
        .await
    }

    async fn verify(&self, token: &str, audience: &str) -> Value {
        let http = reqwest::Client::new();
        verify_with_jwks(&http, &format!("http://{}/.well-known/jwks.json", self.http), STS_ISSUER, token, audience)
            .await
            .1
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown()).await.expect("shutdown in time");
        }
    }
}

/// A TLS client that trusts `ca` and presents `identity`, offering `h2`.
fn client_config(ca: &str, identity: Option<&Pem>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A gRPC channel over TLS to `addr` (one connection, kept).
async fn tls_channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Channel, String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A plaintext gRPC channel to `addr` from the local address `from`.
async fn plain_channel_from(addr: SocketAddr, from: IpAddr) -> Channel {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            Ok::<_, std::io::Error>(TokioIo::new(socket.connect(addr).await?))
        }))
        .await
        .expect("plaintext channel")
}

/// One Check on `channel`, with an `x-forwarded-client-cert` if given; an
/// error when the connection or the call fails.
async fn check_on(channel: &Channel, req: CheckRequest, xfcc: Option<&str>) -> Result<CheckResponse, String> {
    let mut req = tonic::Request::new(req);
    if let Some(value) = xfcc {
        req.metadata_mut().insert(XFCC, value.parse().unwrap());
    }
    let mut client = AuthorizationClient::new(channel.clone());
    tokio::time::timeout(Duration::from_secs(5), client.check(req))
        .await
        .map_err(|_| "no answer in 5s".to_owned())?
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}

/// Connects with `config` and makes one Check: the answer, or why there is none.
async fn check_over_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    req: CheckRequest,
) -> Result<CheckResponse, String> {
    let channel = tls_channel(addr, config).await?;
    check_on(&channel, req, None).await
}

/// A Check for `audience` with a fresh subject token, reporting `principal`
/// as Envoy's `source.principal`.
fn check_for(idp: &MockIdp, audience: &str, principal: Option<&str>) -> CheckRequest {
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let builder = request_to("orders.shop", "/orders/1").bearer(&token).context("audience", audience);
    match principal {
        Some(p) => builder.peer(p).build(),
        None => builder.build(),
    }
}

/// `web` delegates towards orders; anyone else only exchanges.
const RULES: &str = r#"
- name: web-delegates-orders
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/web"] }
  grant: { outcome: delegation, scopes: ["orders.*"], max_lifetime: 2m }
- name: orders
  match:
    audiences: [orders, payments]
  grant: { scopes: ["orders.*"], max_lifetime: 2m }
"#;

/// The files of a TLS listener in `dir`: `current/tls.crt`, `current/tls.key`
/// (`current` a symlink to a directory, as a Kubernetes Secret volume has
/// it) and `ca.crt`.
struct TlsFiles {
    dir: PathBuf,
    generation: usize,
}

impl TlsFiles {
    fn new(dir: &TempDir, ca: &Ca, server: &Pem) -> TlsFiles {
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        let mut files = TlsFiles { dir: dir.path().to_owned(), generation: 0 };
        files.publish(&server.cert, &server.key);
        files
    }

    /// Puts `cert` and `key` in place at once: a new directory, then the
    /// `current` symlink swapped to it (rename over it is atomic).
    fn publish(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let name = format!("gen{}", self.generation);
        let gen_dir = self.dir.join(&name);
        std::fs::create_dir(&gen_dir).unwrap();
        std::fs::write(gen_dir.join("tls.crt"), cert).unwrap();
        std::fs::write(gen_dir.join("tls.key"), key).unwrap();
        let next = self.dir.join("next");
        std::os::unix::fs::symlink(&name, &next).unwrap();
        std::fs::rename(&next, self.dir.join("current")).unwrap();
    }

    fn listen(&self, reload_interval: &str) -> String {
        let p = |f: &str| self.dir.join(f).display().to_string();
        format!(
            "grpc_tls:\n  cert: {}\n  key: {}\n  client_ca: {}\n  reload_interval: {reload_interval}\n",
            p("current/tls.crt"),
            p("current/tls.key"),
            p("ca.crt")
        )
    }
}

/// The leaf certificate the gRPC listener serves to a new connection.
async fn served_certificate(addr: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An mTLS stsgate whose only Check caller is `orders`' Envoy, for
/// `audiences` and believed about `source.principal` or not.
struct MtlsSetup {
    idp: MockIdp,
    ca: Ca,
    sts: Sts,
}

impl MtlsSetup {
    async fn start(callers: &str) -> MtlsSetup {
        let idp = MockIdp::start().await;
        let ca = Ca::new("stsgate test CA");
        let dir = TempDir::new("check-callers");
        let files = TlsFiles::new(&dir, &ca, &ca.server("stsgate"));
        let listen = files.listen("30s");
        let builder = Harness::builder(&idp).rules(RULES).ext_authz(callers);
        let sts = Sts::start(builder, &listen, dir).await;
        MtlsSetup { idp, ca, sts }
    }

    fn as_caller(&self, spiffe: &str) -> Arc<ClientConfig> {
        client_config(&self.ca.pem(), Some(&self.ca.client(spiffe)))
    }
}

const ORDERS_CALLS: &str =
    "callers:\n  - { identity: \"spiffe://cluster.local/ns/shop/sa/orders\", audiences: [orders] }";

#[track_caller]
fn assert_caller_refused(resp: &CheckResponse, label: &str, description: &str) {
    let d = denial(resp);
    assert_eq!((d.rpc_code, d.http_status, d.error()), (RPC_PERMISSION_DENIED, 403, "access_denied"), "{d:#?}");
    assert_eq!(d.description(), description, "{d:#?}");
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some(label), "{d:#?}");
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mtls_a_listed_caller_is_answered_and_the_source_principal_it_reports_acts() {
    let s = MtlsSetup::start(ORDERS_CALLS).await;
    let resp = check_over_tls(s.sts.grpc, s.as_caller(ORDERS), check_for(&s.idp, "orders", Some(WEB))).await.unwrap();
    let claims = s.sts.verify(&allowed(&resp).bearer(), "orders").await;
    assert_eq!(claims["act"], serde_json::json!({ "sub": WEB }), "{claims}");
    assert_eq!(claims["sub"], "alice");
    // The whole conversation rides one connection.
    let channel = tls_channel(s.sts.grpc, s.as_caller(ORDERS)).await.unwrap();
    for _ in 0..3 {
        allowed(&check_on(&channel, check_for(&s.idp, "orders", Some(WEB)), None).await.unwrap());
    }
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_a_connection_without_a_client_certificate_is_refused() {
    let s = MtlsSetup::start(ORDERS_CALLS).await;
    let anonymous = client_config(&s.ca.pem(), None);
    let err = check_over_tls(s.sts.grpc, anonymous, check_for(&s.idp, "orders", Some(WEB))).await.unwrap_err();
    println!("without a client certificate: {err}");
    s.sts
        .eventually_metric("stsgate_connections_refused_total", &["listener=\"grpc\"", "reason=\"tls_handshake\""])
        .await;
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_a_client_certificate_from_another_ca_is_refused() {
    let s = MtlsSetup::start(ORDERS_CALLS).await;
    // The same SPIFFE ID, from a CA stsgate does not trust.
    let rogue = Ca::new("rogue CA").client(ORDERS);
    let err =
        check_over_tls(s.sts.grpc, client_config(&s.ca.pem(), Some(&rogue)), check_for(&s.idp, "orders", Some(WEB)))
            .await
            .unwrap_err();
    println!("with a rogue client certificate: {err}");
    s.sts
        .eventually_metric("stsgate_connections_refused_total", &["listener=\"grpc\"", "reason=\"tls_handshake\""])
        .await;
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_a_caller_no_callers_entry_names_is_refused() {
    let s = MtlsSetup::start(ORDERS_CALLS).await;
    let resp = check_over_tls(s.sts.grpc, s.as_caller(INTRUDER), check_for(&s.idp, "orders", Some(WEB))).await.unwrap();
    assert_caller_refused(
        &resp,
        "caller_unknown",
        &format!("the Check caller {INTRUDER} is not allowed to call Check"),
    );
    let denied = s.sts.metric("stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"caller_unknown\""]);
    assert_eq!(denied.await, Some(1.0));

    // A certificate from the right CA without a URI SAN names nobody.
    let nameless = s.ca.sign(
        "nameless",
        vec![SanType::DnsName("web.shop".try_into().unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let config = client_config(&s.ca.pem(), Some(&nameless));
    let resp = check_over_tls(s.sts.grpc, config, check_for(&s.idp, "orders", Some(WEB))).await.unwrap();
    assert_caller_refused(&resp, "caller_unknown", "the Check caller is not authenticated");
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_a_caller_asking_for_an_audience_its_entry_does_not_list_is_refused() {
    let s = MtlsSetup::start(ORDERS_CALLS).await;
    let resp = check_over_tls(s.sts.grpc, s.as_caller(ORDERS), check_for(&s.idp, "payments", None)).await.unwrap();
    assert_caller_refused(
        &resp,
        "caller_audience",
        &format!("the Check caller {ORDERS} may not ask for audience \"payments\""),
    );
    let denied = s.sts.metric("stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"caller_audience\""]);
    assert_eq!(denied.await, Some(1.0));
    // The same caller, for its own audience: answered.
    let resp = check_over_tls(s.sts.grpc, s.as_caller(ORDERS), check_for(&s.idp, "orders", None)).await.unwrap();
    allowed(&resp);
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_the_source_principal_of_a_caller_not_believed_is_ignored() {
    let callers = "callers:\n  - { identity: \"spiffe://cluster.local/ns/shop/sa/orders\", audiences: [orders], source_principal: false }";
    let s = MtlsSetup::start(callers).await;
    // It says the request comes from web: not believed, so no delegation,
    // only the plain exchange any caller gets.
    let resp = check_over_tls(s.sts.grpc, s.as_caller(ORDERS), check_for(&s.idp, "orders", Some(WEB))).await.unwrap();
    let ok = allowed(&resp);
    let claims = s.sts.verify(&ok.bearer(), "orders").await;
    assert!(claims.get("act").is_none(), "a source.principal that is not believed must not act: {claims}");
    assert_eq!(ok.metadata.get("rule").map(String::as_str), Some("orders"));
    assert_eq!(ok.metadata.get("actor"), None);
    s.sts.shutdown().await;
}

#[tokio::test]
async fn mtls_the_tls_handshake_counts_within_the_handshake_timeout() {
    let idp = MockIdp::start().await;
    let ca = Ca::new("stsgate test CA");
    let dir = TempDir::new("check-callers");
    let files = TlsFiles::new(&dir, &ca, &ca.server("stsgate"));
    let listen = format!("handshake_timeout: 1s\n{}", files.listen("30s"));
    let sts = Sts::start(Harness::builder(&idp).rules(RULES).ext_authz(ORDERS_CALLS), &listen, dir).await;

    // Connected, and then nothing: no ClientHello.
    let mut silent = TcpStream::connect(sts.grpc).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("closed within 5s");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is closed: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    sts.eventually_metric("stsgate_connections_closed_total", &["listener=\"grpc\"", "reason=\"handshake_timeout\""])
        .await;
    sts.shutdown().await;
}

#[tokio::test]
async fn mtls_a_rotated_certificate_is_served_to_new_connections_and_open_ones_keep_going() {
    let idp = MockIdp::start().await;
    let ca = Ca::new("stsgate test CA");
    let dir = TempDir::new("check-callers");
    let (first, second) = (ca.server("stsgate-1"), ca.server("stsgate-2"));
    let mut files = TlsFiles::new(&dir, &ca, &first);
    let listen = files.listen("1s");
    let sts = Sts::start(Harness::builder(&idp).rules(RULES).ext_authz(ORDERS_CALLS), &listen, dir).await;
    let orders = client_config(&ca.pem(), Some(&ca.client(ORDERS)));
    assert_eq!(served_certificate(sts.grpc, orders.clone()).await, der_of(&first.cert));
    let expiry = sts.metric("stsgate_grpc_tls_certificate_expiry_timestamp_seconds", &[]).await.unwrap();
    assert!(expiry > now() as f64, "the served certificate's expiry is exported: {expiry}");
    let open = tls_channel(sts.grpc, orders.clone()).await.unwrap();
    allowed(&check_on(&open, check_for(&idp, "orders", Some(WEB)), None).await.unwrap());

    // The Secret is updated: new connections get the new certificate.
    files.publish(&second.cert, &second.key);
    eventually_some("the new certificate served", WAIT, || {
        let orders = orders.clone();
        let want = der_of(&second.cert);
        async move { (served_certificate(sts.grpc, orders).await == want).then_some(()) }
    })
    .await;
    assert_eq!(sts.metric("stsgate_grpc_tls_reloads_total", &["result=\"ok\""]).await, Some(1.0));
    // The connection opened before keeps going.
    allowed(&check_on(&open, check_for(&idp, "orders", Some(WEB)), None).await.unwrap());

    // A broken update (a certificate that does not go with the key) keeps
    // the one in use, and says so.
    files.publish(&first.cert, &second.key);
    eventually_some("the broken update counted", WAIT, || async {
        (sts.metric("stsgate_grpc_tls_reloads_total", &["result=\"error\""]).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(served_certificate(sts.grpc, orders.clone()).await, der_of(&second.cert));
    let resp = check_over_tls(sts.grpc, orders.clone(), check_for(&idp, "orders", Some(WEB))).await.unwrap();
    allowed(&resp);
    allowed(&check_on(&open, check_for(&idp, "orders", Some(WEB)), None).await.unwrap());
    sts.shutdown().await;
}

// ---------------------------------------------------------------------------
// x-forwarded-client-cert from stsgate's own sidecar
// ---------------------------------------------------------------------------

/// What stsgate's sidecar sends in SANITIZE_SET mode for a client whose
/// certificate names `uri`.
fn xfcc_for(uri: &str) -> String {
    format!(
        "By=spiffe://cluster.local/ns/sts/sa/stsgate;\
         Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject=\"CN=sidecar,O=shop\";URI={uri}"
    )
}

async fn xfcc_setup(trusted: &str) -> (MockIdp, Sts) {
    let idp = MockIdp::start().await;
    let ext_authz = format!("caller_identity: xfcc\nxfcc_trusted_peers: [{trusted}]\n{ORDERS_CALLS}");
    let sts = Sts::start(Harness::builder(&idp).rules(RULES).ext_authz(&ext_authz), "{}", TempDir::new("xfcc")).await;
    (idp, sts)
}

#[tokio::test]
async fn xfcc_from_a_trusted_peer_names_the_caller() {
    let (idp, sts) = xfcc_setup("127.0.0.1/32").await;
    let channel = plain_channel_from(sts.grpc, Ipv4Addr::LOCALHOST.into()).await;
    let resp = check_on(&channel, check_for(&idp, "orders", Some(WEB)), Some(&xfcc_for(ORDERS))).await.unwrap();
    let claims = sts.verify(&allowed(&resp).bearer(), "orders").await;
    assert_eq!(claims["act"], serde_json::json!({ "sub": WEB }), "{claims}");

    // The caller it names is held to its entry ...
    let resp = check_on(&channel, check_for(&idp, "payments", None), Some(&xfcc_for(ORDERS))).await.unwrap();
    assert_caller_refused(
        &resp,
        "caller_audience",
        &format!("the Check caller {ORDERS} may not ask for audience \"payments\""),
    );
    let resp = check_on(&channel, check_for(&idp, "orders", None), Some(&xfcc_for(INTRUDER))).await.unwrap();
    assert_caller_refused(
        &resp,
        "caller_unknown",
        &format!("the Check caller {INTRUDER} is not allowed to call Check"),
    );
    // ... and without the header, or with one that cannot be read, there is none.
    for header in [None, Some("URI=\"spiffe://cluster.local/ns/shop/sa/orders")] {
        let resp = check_on(&channel, check_for(&idp, "orders", None), header).await.unwrap();
        assert_caller_refused(&resp, "caller_unknown", "the Check caller is not authenticated");
    }
    sts.shutdown().await;
}

#[tokio::test]
async fn xfcc_from_an_untrusted_peer_is_not_believed() {
    // Only 127.0.0.1 is the sidecar; the test connects from 127.0.0.2 (all
    // of 127.0.0.0/8 is loopback on Linux).
    let (idp, sts) = xfcc_setup("127.0.0.1/32").await;
    let channel = plain_channel_from(sts.grpc, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let resp = check_on(&channel, check_for(&idp, "orders", Some(WEB)), Some(&xfcc_for(ORDERS))).await.unwrap();
    assert_caller_refused(&resp, "caller_unknown", "the Check caller is not authenticated");
    sts.shutdown().await;

    // The same from 127.0.0.1 when only 127.0.0.6 is trusted.
    let (idp, sts) = xfcc_setup("127.0.0.6/32").await;
    let channel = plain_channel_from(sts.grpc, Ipv4Addr::LOCALHOST.into()).await;
    let resp = check_on(&channel, check_for(&idp, "orders", Some(WEB)), Some(&xfcc_for(ORDERS))).await.unwrap();
    assert_caller_refused(&resp, "caller_unknown", "the Check caller is not authenticated");
    sts.shutdown().await;
}

// ---------------------------------------------------------------------------
// Plaintext without callers (development), and check-config
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plaintext_without_callers_still_believes_everyone() {
    let idp = MockIdp::start().await;
    let sts = Sts::start(Harness::builder(&idp).rules(RULES), "{}", TempDir::new("plaintext")).await;
    let channel = plain_channel_from(sts.grpc, Ipv4Addr::LOCALHOST.into()).await;
    let resp = check_on(&channel, check_for(&idp, "payments", None), None).await.unwrap();
    allowed(&resp);
    let resp = check_on(&channel, check_for(&idp, "orders", Some(WEB)), None).await.unwrap();
    let claims = sts.verify(&allowed(&resp).bearer(), "orders").await;
    assert_eq!(claims["act"], serde_json::json!({ "sub": WEB }), "{claims}");
    sts.shutdown().await;
}

fn check_config(dir: &Path, yaml: &str) -> (bool, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_stsgate")).arg("check-config").arg(&path).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_reads_the_tls_files_and_refuses_mixed_modes() {
    let dir = TempDir::new("check-config-tls");
    let ca = Ca::new("stsgate test CA");
    let (server, other) = (ca.server("stsgate"), ca.server("other"));
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), &server.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &server.key).unwrap();
    std::fs::write(dir.join("other.key"), &other.key).unwrap();
    let base = "issuer: https://sts.test\nsigning: { keys: [{ kid: a, ephemeral: true }] }\n\
                trusted_issuers: [{ issuer: https://idp.test, jwks_url: https://idp.test/jwks, audiences: [sts] }]\n\
                rules: [{ name: all, grant: { scopes: [\"*\"] } }]\n";
    // Relative paths are relative to the configuration file.
    let tls =
        |cert: &str, key: &str| format!("listen:\n  grpc_tls: {{ cert: {cert}, key: {key}, client_ca: ca.crt }}\n");
    let callers = format!("ext_authz:\n  {ORDERS_CALLS}\n").replace("\n  - ", "\n    - ");

    let (ok, out) = check_config(dir.path(), &format!("{base}{}{callers}", tls("tls.crt", "tls.key")));
    assert!(ok, "{out}");
    assert!(!out.contains("Check callers") && !out.contains("ext_authz.callers"), "{out}");

    let (ok, out) = check_config(dir.path(), &format!("{base}{}", tls("tls.crt", "tls.key")));
    assert!(ok, "{out}");
    assert!(out.contains("warning: ext_authz.callers is empty"), "{out}");

    let (ok, out) = check_config(dir.path(), base);
    assert!(ok, "{out}");
    assert!(out.contains("warning: Check callers are not authenticated"), "{out}");

    let (ok, out) = check_config(dir.path(), &format!("{base}{}", tls("missing.crt", "tls.key")));
    assert!(!ok && out.contains("listen.grpc_tls.cert: ") && out.contains("missing.crt: cannot read"), "{out}");
    let (ok, out) = check_config(dir.path(), &format!("{base}{}", tls("tls.crt", "other.key")));
    assert!(!ok && out.contains("listen.grpc_tls.key: ") && out.contains("does not go with the certificate"), "{out}");
    let (ok, out) = check_config(dir.path(), &format!("{base}{}", tls("tls.key", "tls.key")));
    assert!(!ok && out.contains("listen.grpc_tls.cert: ") && out.contains("holds no PEM certificate"), "{out}");

    let (ok, out) = check_config(dir.path(), &format!("{base}ext_authz:\n  caller_identity: mtls\n"));
    assert!(!ok && out.contains("ext_authz.caller_identity: mtls needs listen.grpc_tls"), "{out}");
    let (ok, out) = check_config(dir.path(), &format!("{base}{callers}"));
    assert!(!ok && out.contains("ext_authz.callers: needs authenticated callers"), "{out}");
}
