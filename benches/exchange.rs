//! Criterion benchmarks of the exchange hot path, and the crypto ceiling it is
//! measured against (run: `cargo bench --bench exchange`).
//!
//! - `validate`: RS256 subject token (~830 bytes, keys from a `jwks_file`
//!   issuer), straight through the `Validator` (no validated-token cache).
//! - `rules`: `rules::evaluate` over 10 rules, the 10th matching (an 11th,
//!   for stsgate's own tokens, comes after it).
//! - `mint`: ES256 signature of typical RFC 9068 claims through `Signer`.
//! - `cache_hit`: `Engine::exchange` of a request answered from the minted cache.
//! - `check_cached` / `check_cold`: `AuthzService::decide` end to end on a
//!   `CheckRequest`; cold = every cache disabled (verify + rules + sign).
//! - `check_cached_second_hop`: the same as `check_cached` one hop further
//!   down a delegation chain: stsgate's own token (minted for `bench-web`)
//!   re-exchanged by web's mTLS peer (`issuers: [self]`, presenter binding).
//! - `logged/check_cached` / `logged/check_cold`: the same under the
//!   binary's subscriber (logs at `info` to a sink), telemetry off.
//! - `traced/check_cached` / `traced/check_cold`: telemetry on, every span
//!   exported (batched) to an in-process exporter that drops them.
//! - `ceiling/rs256_verify_raw` + `ceiling/es256_sign_raw`: aws-lc-rs with
//!   keys parsed once, no JWT layer. ceiling µs = verify + sign; the cold
//!   exchange is compared with it (scripts/bench.sh computes the ratio).
//! - `ceiling/rs256_verify_jsonwebtoken`: what `validate` calls for the
//!   signature (jsonwebtoken with a JWK n/e key), for comparison.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, ParsedPublicKey, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use serde_json::{Map, json};
use tokio::runtime::Runtime;

use stsgate::api::ext_authz::AuthzService;
use stsgate::clock::now_unix;
use stsgate::config::Config;
use stsgate::engine::mint::{AccessClaims, new_jti};
use stsgate::engine::{Engine, ExchangeRequest};
use stsgate::metrics::Metrics;
use stsgate::pb::envoy::service::auth::v3::CheckRequest;
use stsgate::rules::SubId;
use stsgate::rules::{self, RuleInput};
use stsgate::runtime::telemetry;
use stsgate::testkit::CheckRequestBuilder;
use stsgate::testkit::bench::{AUDIENCE, IDP, Idp, RULES, check_request, config};
use stsgate::trust::issuer::http_client;

/// The binary's allocator, so that the figures are of what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENT_ID: &str = "stsgate-ext-authz";

/// The workload that re-exchanges its token in `check_cached_second_hop`.
const WEB_SPIFFE: &str = "spiffe://cluster.local/ns/bench/sa/web";

struct Fixture {
    rt: Runtime,
    idp: Idp,
    token: String,
    cached: Arc<Engine>,
    cold: Arc<Engine>,
    svc_cached: AuthzService,
    svc_cold: AuthzService,
    check: CheckRequest,
}

async fn engine(cfg: Config) -> Arc<Engine> {
    let engine = Engine::load(Arc::new(cfg), http_client().expect("http client"), None).expect("signing keys");
    let failed = engine.fetch_issuer_keys().await;
    assert!(failed.is_empty(), "load the IdP JWKS file: {failed:?}");
    Arc::new(engine)
}

fn fixture() -> Fixture {
    stsgate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let idp = Idp::new("bench");
    let token = idp.token.clone();

    let cached = rt.block_on(engine(config(&idp.jwks, "{ enabled: true }", RULES)));
    let cold = rt.block_on(engine(config(&idp.jwks, "{ enabled: false }", RULES)));
    let metrics = Metrics::register(&mut Registry::default());
    let svc_cached = AuthzService::new(cached.clone(), metrics.clone());
    let svc_cold = AuthzService::new(cold.clone(), metrics);
    let check = check_request(&token);
    Fixture { rt, idp, token, cached, cold, svc_cached, svc_cold, check }
}

fn exchange_request(token: &str) -> ExchangeRequest<'_> {
    ExchangeRequest {
        subject_token: token,
        audience: AUDIENCE,
        scopes: None,
        default_client_id: CLIENT_ID,
        actor: None,
        requested_subject: None,
        actor_exp: None,
        client: None,
        origin: Default::default(),
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let now = now_unix();

    // Sanity: the fixture exchanges, so nothing below measures an error path.
    let validated = f.rt.block_on(f.cold.validator().validate_at(&f.token, now)).expect("subject token validates");
    let done = f.rt.block_on(f.cold.exchange(&exchange_request(&f.token))).expect("exchange succeeds");
    assert_eq!(done.rule(), "r10-bench");
    eprintln!("subject token {} bytes, minted token {} bytes", f.token.len(), done.token().len());

    c.bench_function("validate", |b| {
        b.iter(|| f.rt.block_on(f.cold.validator().validate_at(black_box(&f.token), now)).unwrap())
    });

    let input = RuleInput {
        subject: &validated,
        actor: None,
        audience: AUDIENCE,
        requested_scopes: None,
        requested_subject: None,
        workloads: &f.cold.cfg.workloads,
    };
    c.bench_function("rules", |b| b.iter(|| rules::evaluate(black_box(&f.cold.cfg.rules), black_box(&input)).unwrap()));

    let signer = f.cold.keys.active().clone();
    let claims = AccessClaims {
        iss: "https://sts.bench.example".into(),
        sub: "user-000001".into(),
        sub_id: SubId::IssSub { iss: IDP.into(), sub: "user-000001".into() },
        aud: AUDIENCE.into(),
        exp: now + 300,
        iat: now,
        jti: new_jti().expect("rng"),
        client_id: "web-frontend".into(),
        scope: Some("email orders.read orders.write profile".into()),
        act: None,
        extra: Map::new(),
    };
    c.bench_function("mint", |b| b.iter(|| signer.sign_access_token(black_box(&claims)).unwrap()));

    let req = exchange_request(&f.token);
    f.rt.block_on(f.cached.exchange(&req)).expect("warm the cache");
    c.bench_function("cache_hit", |b| b.iter(|| f.rt.block_on(f.cached.exchange(black_box(&req))).unwrap()));

    let ok = |r: &stsgate::pb::envoy::service::auth::v3::CheckResponse| r.status.as_ref().is_some_and(|s| s.code == 0);
    assert!(ok(&f.rt.block_on(f.svc_cached.decide(f.check.clone()))), "cached Check allowed");
    assert!(ok(&f.rt.block_on(f.svc_cold.decide(f.check.clone()))), "cold Check allowed");
    c.bench_function("check_cached", |b| {
        b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cached.decide(r)), BatchSize::SmallInput)
    });
    c.bench_function("check_cold", |b| {
        b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cold.decide(r)), BatchSize::SmallInput)
    });

    // One hop further: web's own token (minted now, so that it outlives the
    // bench) re-exchanged for the same audience by web's mTLS identity. The
    // route asks for the peer (`ext_authz.actor.mode` is `none` here).
    let hop1 =
        f.rt.block_on(f.cached.exchange(&ExchangeRequest { audience: "bench-web", ..exchange_request(&f.token) }));
    let hop1 = hop1.expect("first hop").token();
    let second_hop = CheckRequestBuilder::new()
        .host("bench.example")
        .pseudo_headers()
        .header("user-agent", "wrk")
        .header("x-request-id", "00000000-0000-4000-8000-000000000000")
        .bearer(&hop1)
        .context("audience", AUDIENCE)
        .context("actor", "peer")
        .peer(WEB_SPIFFE)
        .build();
    let first = f.rt.block_on(f.svc_cached.decide(second_hop.clone()));
    assert!(ok(&first), "second hop allowed: {first:?}");
    c.bench_function("check_cached_second_hop", |b| {
        b.iter_batched(|| second_hop.clone(), |r| f.rt.block_on(f.svc_cached.decide(r)), BatchSize::SmallInput)
    });

    // The same Checks under the binary's own subscriber (logs at `info`,
    // written to a sink): `logged/*` with telemetry off (what the spans cost
    // when nobody exports them), `traced/*` with every span exported to an
    // in-process exporter that drops them (the cost of tracing itself).
    let info = || tracing_subscriber::EnvFilter::new("info");
    let logged = telemetry::subscriber(false, info(), std::io::sink, None);
    tracing::subscriber::with_default(logged, || {
        c.bench_function("logged/check_cached", |b| {
            b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cached.decide(r)), BatchSize::SmallInput)
        });
        c.bench_function("logged/check_cold", |b| {
            b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cold.decide(r)), BatchSize::SmallInput)
        });
    });
    let cfg = stsgate::config::TelemetryConfig::default();
    let exporting = telemetry::Telemetry::from(telemetry::provider(&cfg, DropSpans));
    let traced = telemetry::subscriber(false, info(), std::io::sink, Some(&exporting));
    tracing::subscriber::with_default(traced, || {
        c.bench_function("traced/check_cached", |b| {
            b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cached.decide(r)), BatchSize::SmallInput)
        });
        c.bench_function("traced/check_cold", |b| {
            b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(f.svc_cold.decide(r)), BatchSize::SmallInput)
        });
    });
    exporting.shutdown();

    // The crypto ceiling: aws-lc-rs keys parsed once, no JWT layer, messages
    // the size of the real signing inputs.
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let subject_input = f.token.rsplit_once('.').expect("three parts").0.as_bytes().to_vec();
    let mut rsa_sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, &subject_input, &mut rsa_sig).expect("RSA sign");
    let rsa_pub =
        ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa.public_key().as_ref()).expect("RSA public");
    let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key");
    let minted_input = done.token().rsplit_once('.').expect("three parts").0.as_bytes().to_vec();

    let mut g = c.benchmark_group("ceiling");
    g.bench_function("rs256_verify_raw", |b| {
        b.iter(|| rsa_pub.verify_sig(black_box(&subject_input), black_box(&rsa_sig)).unwrap())
    });
    g.bench_function("es256_sign_raw", |b| b.iter(|| ec.sign(&rng, black_box(&minted_input)).unwrap()));
    // The same RSA check as `validate` does it: jsonwebtoken with a JWK (n, e) key.
    let n = URL_SAFE_NO_PAD.encode(rsa.public_key().modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(rsa.public_key().exponent().big_endian_without_leading_zero());
    let jwt_key = jsonwebtoken::DecodingKey::from_rsa_components(&n, &e).expect("n/e key");
    let sig_b64 = URL_SAFE_NO_PAD.encode(&rsa_sig);
    g.bench_function("rs256_verify_jsonwebtoken", |b| {
        b.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(
                    &sig_b64,
                    black_box(&subject_input),
                    &jwt_key,
                    jsonwebtoken::Algorithm::RS256
                )
                .unwrap()
            )
        })
    });
    g.finish();
}

/// An OpenTelemetry exporter that drops every batch (`traced/*`).
#[derive(Debug)]
struct DropSpans;

impl opentelemetry_sdk::trace::SpanExporter for DropSpans {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .without_plots()
}

// ---------------------------------------------------------------------------
// CEL conditions (issue #15): the same Checks with `r10-bench` carrying a
// typical `match.condition`, against `check_cold` / `check_cached` above.
// - `check_cold_cel`: caches off; the condition reads the subject's claims
//   and the request (so the Check also builds the request's attributes).
// - `check_cached_cel`: caches on; a condition without request reads (the
//   cache key is the usual one).
// - `check_cached_cel_request`: caches on; the condition reads the request
//   (its method and a header are in the cache key).
// ---------------------------------------------------------------------------

/// `config` with `condition` on `r10-bench`.
fn cel_config(jwks: &std::path::Path, cache: &str, condition: &str) -> Config {
    let matcher = "subject: { groups: [customers] } }\n    grant: { scopes: [\"orders.*\"";
    assert!(RULES.contains(matcher), "r10-bench as the CEL benches expect");
    let rules = RULES.replacen(
        matcher,
        &format!(
            "subject: {{ groups: [customers] }}, condition: {} }}\n    grant: {{ scopes: [\"orders.*\"",
            json!(condition)
        ),
        1,
    );
    config(jwks, cache, &rules)
}

fn cel_benches(c: &mut Criterion) {
    const CLAIMS_ONLY: &str = "subject.email.endsWith('@bench.example') && 'orders.read' in scopes";
    const WITH_REQUEST: &str = "subject.email.endsWith('@bench.example') && request.method in ['GET', 'HEAD'] && request.headers['user-agent'] != 'curl'";
    let f = fixture();
    let jwks = f.idp.jwks.clone();
    let service = |condition: &str, cache: &str| {
        let engine = f.rt.block_on(engine(cel_config(&jwks, cache, condition)));
        AuthzService::new(engine, Metrics::register(&mut Registry::default()))
    };
    let cold = service(WITH_REQUEST, "{ enabled: false }");
    let cached = service(CLAIMS_ONLY, "{ enabled: true }");
    let cached_request = service(WITH_REQUEST, "{ enabled: true }");
    let ok = |r: &stsgate::pb::envoy::service::auth::v3::CheckResponse| r.status.as_ref().is_some_and(|s| s.code == 0);
    for svc in [&cold, &cached, &cached_request] {
        let answer = f.rt.block_on(svc.decide(f.check.clone()));
        assert!(ok(&answer), "CEL Check allowed: {answer:?}");
    }
    // The rules alone, as `rules` above, with the condition on r10-bench
    // (the one that matches) and the request it reads.
    let cel_engine = f.rt.block_on(engine(cel_config(&jwks, "{ enabled: false }", WITH_REQUEST)));
    let validated = f.rt.block_on(cel_engine.validator().validate_at(&f.token, now_unix())).expect("validates");
    let input = RuleInput {
        subject: &validated,
        actor: None,
        audience: AUDIENCE,
        requested_scopes: None,
        requested_subject: None,
        workloads: &cel_engine.cfg.workloads,
    };
    let request = rules::RequestAttrs {
        method: "GET".into(),
        headers: [("user-agent".to_owned(), "wrk".to_owned())].into(),
        ..Default::default()
    };
    let requester = rules::Requester { request: Some(&request), ..Default::default() };
    // Only r10-bench can match, and only by its condition.
    assert!(rules::evaluate_as(&cel_engine.cfg.rules, &input, requester).is_ok());
    let post = rules::RequestAttrs { method: "POST".into(), ..Default::default() };
    let by_post = rules::Requester { request: Some(&post), ..Default::default() };
    assert!(rules::evaluate_as(&cel_engine.cfg.rules, &input, by_post).is_err());
    c.bench_function("rules_cel", |b| {
        b.iter(|| rules::evaluate_as(black_box(&cel_engine.cfg.rules), black_box(&input), requester).unwrap())
    });
    c.bench_function("check_cold_cel", |b| {
        b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(cold.decide(r)), BatchSize::SmallInput)
    });
    c.bench_function("check_cached_cel", |b| {
        b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(cached.decide(r)), BatchSize::SmallInput)
    });
    c.bench_function("check_cached_cel_request", |b| {
        b.iter_batched(|| f.check.clone(), |r| f.rt.block_on(cached_request.decide(r)), BatchSize::SmallInput)
    });
}

criterion_group! { name = exchange; config = short(); targets = benches }
criterion_group! { name = cel; config = short(); targets = cel_benches }
criterion_main!(exchange, cel);
