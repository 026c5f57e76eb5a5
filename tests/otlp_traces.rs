//! OpenTelemetry traces of the real binary, received by an OTLP/gRPC collector
//! in this process built on the official protobuf definitions
//! (`opentelemetry-proto`): the spans continue the W3C `traceparent` the
//! caller sent, nest as documented (request → exchange → validate, rules,
//! mint; JWKS fetch under the validation that needed it), and carry no token
//! material. With no `telemetry` section nothing is sent, whatever the
//! standard OTEL_* variables say. An `https` endpoint is reached over TLS,
//! trusting the CA of `telemetry.ca_file`, over OTLP/gRPC and OTLP/HTTP alike.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tokio::net::TcpListener;

use support::{Ca, ChildGuard, KeyKind, MockIdp, TempDir, allowed, check_request, free_port, init_logging, rpc_code};

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What the collector received: every span, and the `service.name` of the
/// resource each came with.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            if let Some(name) = attr(&attrs, "service.name") {
                self.services.lock().unwrap().push(name);
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector serving OTLP/gRPC over TLS with a certificate of `ca` (for
/// localhost): `https://localhost:PORT`.
async fn tls_collector(ca: &Ca) -> (String, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let recorder = Recorder::default();
    let service = TraceServiceServer::new(recorder.clone());
    let server = ca.server("collector");
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(server.cert, server.key));
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut builder = tonic::transport::Server::builder().tls_config(tls).unwrap();
        let _ = builder.add_service(service).serve_with_incoming(incoming).await;
    });
    (url, recorder)
}

async fn collector() -> (String, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = Recorder::default();
    let service = TraceServiceServer::new(recorder.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    (url, recorder)
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value))
}

/// Every string a span carries: name, attributes, events and links.
fn all_text(span: &Span) -> Vec<String> {
    let mut out = vec![span.name.clone()];
    let kv = |a: &[KeyValue]| a.iter().flat_map(|kv| [kv.key.clone(), text(&kv.value)]).collect::<Vec<_>>();
    out.extend(kv(&span.attributes));
    for e in &span.events {
        out.push(e.name.clone());
        out.extend(kv(&e.attributes));
    }
    for l in &span.links {
        out.extend(kv(&l.attributes));
    }
    if let Some(status) = &span.status {
        out.push(status.message.clone());
    }
    out
}

struct Running {
    child: ChildGuard,
    grpc: String,
    http: String,
    log: std::path::PathBuf,
    _dir: TempDir,
}

/// `stsgate serve` trusting `idp`, with this `extra` YAML and environment.
async fn serve(idp: &MockIdp, extra: &str, env: &[(&str, &str)]) -> Running {
    init_logging();
    let dir = TempDir::new("otlp-traces");
    let client = reqwest::Client::new();
    for _attempt in 0..3 {
        let (grpc, http) = (free_port(), free_port());
        let config = format!(
            "listen: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
             issuer: https://sts.test\n\
             signing:\n  keys: [{{ kid: k1, alg: ES256, ephemeral: true }}]\n\
             trusted_issuers:\n  - {{ issuer: \"{}\", discovery: true, algorithms: [RS256] }}\n\
             token_endpoint: {{ allow_unauthenticated: true }}\n\
             rules:\n  - {{ name: orders, match: {{ audiences: [orders] }}, grant: {{ scopes: [\"orders.*\"] }} }}\n\
             {extra}\n",
            idp.issuer
        );
        let path = dir.write("stsgate.yaml", config);
        let log = dir.join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&path).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let cmd = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let mut child = ChildGuard::spawn("stsgate serve", cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.exited().is_some() {
                eprintln!("stsgate exited early:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                break;
            }
            let ready = client.get(format!("http://127.0.0.1:{http}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                let (grpc, http) = (format!("http://127.0.0.1:{grpc}"), format!("http://127.0.0.1:{http}"));
                return Running { child, grpc, http, log, _dir: dir };
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("stsgate did not start in three attempts");
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// The spans of one trace, by name (each name once, else the test says so).
fn trace_of(spans: &[Span], trace_id: &str) -> HashMap<String, Span> {
    let id = hex(trace_id);
    let mut by_name = HashMap::new();
    for s in spans.iter().filter(|s| s.trace_id == id) {
        assert!(by_name.insert(s.name.clone(), s.clone()).is_none(), "two {:?} spans in trace {trace_id}", s.name);
    }
    by_name
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn assert_child(trace: &HashMap<String, Span>, child: &str, parent: &str) {
    let (c, p) = (&trace[child], &trace[parent]);
    assert_eq!(c.parent_span_id, p.span_id, "{child} is a child of {parent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_carry_no_token_material() {
    let idp = MockIdp::start().await;
    let (url, recorder) = collector().await;
    let telemetry = format!("telemetry: {{ otlp_endpoint: \"{url}\", batch_delay: 100ms, service_name: stsgate-it }}");
    let sts = serve(&idp, &telemetry, &[]).await;
    let mut authz = AuthorizationClient::connect(sts.grpc.clone()).await.unwrap();

    // A Check that Envoy forwards with the request's trace context.
    let (trace_a, parent_a) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let bearer = format!("Bearer {subject}");
    let tp = traceparent(trace_a, parent_a);
    let headers = [("authorization", bearer.as_str()), ("traceparent", tp.as_str()), ("tracestate", "vendor=1")];
    let req = check_request(&headers, &[("audience", "orders")], "shop.example", "/orders");
    let resp = authz.check(req).await.unwrap().into_inner();
    let minted_check = allowed(&resp).bearer();

    // A token the running keys do not know: the JWKS is fetched again inside the Check.
    let (trace_b, parent_b) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let rotated = idp.new_key(KeyKind::Rsa, "rsa-2", true);
    let rotated_subject = rotated.token(&idp.claims("bob", "orders.read"));
    let bearer_b = format!("Bearer {rotated_subject}");
    let tp = traceparent(trace_b, parent_b);
    let headers = [("authorization", bearer_b.as_str()), ("traceparent", tp.as_str())];
    let resp = authz.check(check_request(&headers, &[("audience", "orders")], "shop.example", "/")).await.unwrap();
    let minted_b = allowed(&resp.into_inner()).bearer();

    // A refusal: the garbage never reaches an attribute either.
    let (trace_d, parent_d) = ("11111111111111111111111111111111", "2222222222222222");
    let garbage = "Bearer not.a-token.at-all";
    let tp = traceparent(trace_d, parent_d);
    let headers = [("authorization", garbage), ("traceparent", tp.as_str())];
    let resp = authz.check(check_request(&headers, &[("audience", "orders")], "shop.example", "/")).await.unwrap();
    assert_ne!(rpc_code(&resp.into_inner()), 0, "garbage is refused");

    // The token endpoint, called with the caller's trace context.
    let (trace_c, parent_c) = ("5c1c63257de34c67b2bb4ea8e8f00b1a", "53995c3f42cd8ad8");
    let carol = idp.token(&idp.claims("carol", "orders.read"));
    let form = [("grant_type", GRANT), ("subject_token", &carol), ("subject_token_type", AT), ("audience", "orders")];
    let resp = reqwest::Client::new()
        .post(format!("{}/token", sts.http))
        .header("traceparent", traceparent(trace_c, parent_c))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let minted_token = body["access_token"].as_str().expect("access_token").to_owned();

    // Everything arrives within a few batch delays.
    let expected = [(trace_a, 5), (trace_b, 6), (trace_c, 6), (trace_d, 3)];
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = recorder.spans.lock().unwrap().clone();
        let done = expected.iter().all(|(t, n)| spans.iter().filter(|s| s.trace_id == hex(t)).count() >= *n);
        if done {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing; got {:?}\n{}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
            std::fs::read_to_string(&sts.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(recorder.services.lock().unwrap().iter().all(|s| s == "stsgate-it"));

    // The Check: a server span under Envoy's span, then exchange → validate, rules, mint.
    let a = trace_of(&spans, trace_a);
    let names: std::collections::BTreeSet<_> = a.keys().map(String::as_str).collect();
    assert_eq!(names, ["check", "exchange", "mint", "rules", "validate"].into(), "{names:?}");
    assert_eq!(a["check"].parent_span_id, hex(parent_a), "the Check continues the traceparent");
    assert_eq!(a["check"].kind, SpanKind::Server as i32);
    assert_eq!(a["check"].trace_state, "vendor=1");
    assert_child(&a, "exchange", "check");
    for step in ["validate", "rules", "mint"] {
        assert_child(&a, step, "exchange");
    }
    assert_eq!(attr(&a["check"].attributes, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(&a["exchange"].attributes, "cache.hit").as_deref(), Some("false"));
    assert_eq!(attr(&a["validate"].attributes, "cache.hit").as_deref(), Some("false"));
    assert_eq!(attr(&a["validate"].attributes, "issuer"), Some(idp.issuer.clone()));
    assert_eq!(attr(&a["rules"].attributes, "rule").as_deref(), Some("orders"));
    assert_eq!(attr(&a["rules"].attributes, "outcome").as_deref(), Some("exchange"));
    assert_eq!(attr(&a["rules"].attributes, "audience").as_deref(), Some("orders"));
    // Steps start no earlier and end no later than the request.
    for step in ["exchange", "validate", "rules", "mint"] {
        assert!(a[step].start_time_unix_nano >= a["check"].start_time_unix_nano, "{step}");
        assert!(a[step].end_time_unix_nano <= a["check"].end_time_unix_nano, "{step}");
    }

    // The unknown kid: the JWKS fetch is a child of the validation that needed it.
    let b = trace_of(&spans, trace_b);
    assert_eq!(b["check"].parent_span_id, hex(parent_b));
    assert_child(&b, "jwks.fetch", "validate");
    assert_eq!(attr(&b["jwks.fetch"].attributes, "issuer"), Some(idp.issuer.clone()));
    assert_eq!(attr(&b["jwks.fetch"].attributes, "keys").as_deref(), Some("2"));
    // The start-up load belongs to no request: a root span of its own.
    let root_fetch = spans.iter().any(|s| s.name == "jwks.fetch" && s.parent_span_id.is_empty());
    assert!(root_fetch, "the background key load is a root span");

    // The refusal.
    let d = trace_of(&spans, trace_d);
    assert_eq!(attr(&d["check"].attributes, "decision").as_deref(), Some("deny"));
    assert!(attr(&d["check"].attributes, "error").is_some_and(|e| !e.is_empty()));
    assert!(attr(&d["validate"].attributes, "error").is_some_and(|e| !e.is_empty()));
    assert_eq!(attr(&d["validate"].attributes, "issuer"), None, "an unvalidated token's issuer is not recorded");

    // The token endpoint: a server span under the caller's span.
    let c = trace_of(&spans, trace_c);
    assert_eq!(c["token"].parent_span_id, hex(parent_c));
    assert_eq!(c["token"].kind, SpanKind::Server as i32);
    assert_child(&c, "client_auth", "token");
    assert_child(&c, "exchange", "token");
    for step in ["validate", "rules", "mint"] {
        assert_child(&c, step, "exchange");
    }
    assert_eq!(attr(&c["token"].attributes, "decision").as_deref(), Some("allow"));

    // No token, signature or header value anywhere, in any span received.
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    let secrets = [
        subject.clone(),
        signature(&subject),
        carol.clone(),
        signature(&carol),
        rotated_subject.clone(),
        signature(&rotated_subject),
        minted_check.clone(),
        signature(&minted_check),
        minted_b.clone(),
        signature(&minted_b),
        minted_token.clone(),
        signature(&minted_token),
        "not.a-token.at-all".into(),
    ];
    for span in &spans {
        for value in all_text(span) {
            for secret in &secrets {
                assert!(!value.contains(secret.as_str()), "span {:?} carries token material: {value}", span.name);
            }
            // Any JWT (its header starts `{"` → eyJ) or bearer credential.
            assert!(!value.contains("eyJ") && !value.contains("Bearer"), "span {:?}: {value}", span.name);
        }
    }
    drop(sts.child);
}

/// OTLP/gRPC to an `https` endpoint: TLS, trusting `ca_file`'s CA. The same
/// collector without `ca_file` (the public roots) gets nothing: the
/// collector's certificate is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_that_ca_file_trusts() {
    let idp = MockIdp::start().await;
    let ca = Ca::new("collector CA");
    let dir = TempDir::new("otlp-tls");
    let ca_file = dir.write("collector-ca.pem", ca.pem());
    let check = |sts: &Running| {
        let (grpc, idp) = (sts.grpc.clone(), &idp);
        async move {
            let mut authz = AuthorizationClient::connect(grpc).await.unwrap();
            let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "orders.read")));
            let headers = [("authorization", bearer.as_str())];
            let resp = authz.check(check_request(&headers, &[("audience", "orders")], "shop.example", "/")).await;
            allowed(&resp.unwrap().into_inner());
        }
    };
    let spans_of = |recorder: &Recorder| recorder.spans.lock().unwrap().len();

    let (url, trusted) = tls_collector(&ca).await;
    let telemetry =
        format!("telemetry: {{ otlp_endpoint: \"{url}\", ca_file: \"{}\", batch_delay: 100ms }}", ca_file.display());
    let sts = serve(&idp, &telemetry, &[]).await;
    check(&sts).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while spans_of(&trusted) == 0 {
        assert!(Instant::now() < deadline, "no span over TLS:\n{}", std::fs::read_to_string(&sts.log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sts.child);

    let (url, untrusted) = tls_collector(&ca).await;
    let telemetry = format!("telemetry: {{ otlp_endpoint: \"{url}\", batch_delay: 100ms, timeout: 1s }}");
    let sts = serve(&idp, &telemetry, &[]).await;
    check(&sts).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(spans_of(&untrusted), 0, "a collector whose certificate the public roots do not sign gets nothing");
    drop(sts.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_telemetry_section_nothing_is_sent() {
    let idp = MockIdp::start().await;
    // A collector that counts connections; the standard variables point at it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()), ("OTEL_TRACES_EXPORTER", "otlp")];
    let sts = serve(&idp, "", &env).await;
    let mut authz = AuthorizationClient::connect(sts.grpc.clone()).await.unwrap();
    let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "orders.read")));
    let tp = traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let headers = [("authorization", bearer.as_str()), ("traceparent", tp.as_str())];
    let resp = authz.check(check_request(&headers, &[("audience", "orders")], "shop.example", "/")).await.unwrap();
    allowed(&resp.into_inner());
    // Longer than any batch delay a test would use; the exporter's default is 5 s,
    // but with no exporter there is nothing to wait for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection to the collector");
    drop(sts.child);
}
