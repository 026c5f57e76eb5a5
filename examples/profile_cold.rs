//! A profiling harness for the cold exchange (issue 17): runs one operation N
//! times in a loop, each run inside the one function `measured`, so that a
//! profiler counts exactly the per-request work. The set-up is the criterion
//! bench's, from `stsgate::testkit::bench`: an RS256 subject token of an IdP
//! with a `jwks_file`, ten rules (the tenth matches), an ephemeral ES256
//! signing key, the Check built the way Envoy sends it for a wrk request.
//!
//! ```sh
//! cargo build --release --example profile_cold
//! valgrind --tool=callgrind --toggle-collect='profile_cold::measured' \
//!   --callgrind-out-file=/tmp/cg.cold target/release/examples/profile_cold cold 200 >/dev/null
//! callgrind_annotate --inclusive=yes /tmp/cg.cold | head -60
//! ```
//!
//! Operations: `cold` (`AuthzService::decide`, every cache off: RS256 verify +
//! rules + ES256 sign + the answer), `cached` (the same answered from the
//! minted-token cache), `verify` and `sign` (the crypto ceiling: aws-lc-rs
//! with keys parsed once, messages the size of the real signing inputs, as
//! `ceiling/*` in the bench), `ceiling` (both in one run) and
//! `ceiling+cached` (both, then a cached Check: the non-crypto code of a
//! Check run on the caches the signatures left); `ratio` times N rounds of
//! one 50-run block of each of ceiling, cold, cached and ceiling+cached and
//! prints the medians of their ratios to the round's ceiling (wall time
//! that holds on a noisy machine); `sizes` prints the size of the Check's
//! future.
//! `--logged` runs under the binary's subscriber at `info` (writing to a
//! sink). Audit events are written to /dev/null (their cost is counted).
//! Without valgrind it prints the mean time per operation, as a sanity check.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, ParsedPublicKey, RsaKeyPair};
use prometheus_client::registry::Registry;

use stsgate::api::ext_authz::AuthzService;
use stsgate::engine::Engine;
use stsgate::metrics::Metrics;
use stsgate::runtime::telemetry;
use stsgate::testkit::bench::{Idp, RULES, check_request, config};
use stsgate::trust::issuer::http_client;

/// The binary's allocator, so that the counts are of what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs before the measured ones.
const WARM_UP: usize = 20;

/// The one function a profiler counts: `--toggle-collect=profile_cold::measured`.
#[inline(never)]
fn measured(op: &mut dyn FnMut()) {
    op();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let logged = args.iter().any(|a| a == "--logged");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let op = positional.next().map(String::as_str).unwrap_or("cold").to_owned();
    let n: usize = positional.next().map(|s| s.parse().expect("N is a number")).unwrap_or(1000);

    stsgate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let idp = Idp::new("profile");
    let token = idp.token.clone();
    let engine = |cache: bool| {
        let cfg = config(&idp.jwks, &format!("{{ enabled: {cache} }}"), RULES);
        let e = Engine::load(Arc::new(cfg), http_client().expect("http client"), None).expect("signing keys");
        assert!(rt.block_on(e.fetch_issuer_keys()).is_empty(), "load the IdP JWKS file");
        Arc::new(e)
    };
    let metrics = Metrics::register(&mut Registry::default());
    let check = check_request(&token);
    let allowed =
        |r: &stsgate::pb::envoy::service::auth::v3::CheckResponse| r.status.as_ref().is_some_and(|s| s.code == 0);

    // The crypto ceiling's inputs: the subject token's signing input, and a
    // minted token's (from one cold exchange).
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let subject_input = token.rsplit_once('.').expect("three parts").0.as_bytes().to_vec();
    let mut rsa_sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, &subject_input, &mut rsa_sig).expect("RSA sign");
    let rsa_pub =
        ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa.public_key().as_ref()).expect("RSA public");
    let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key");
    let cold_svc = AuthzService::new(engine(false), metrics.clone());
    let minted_input = {
        let resp = rt.block_on(cold_svc.decide(check.clone()));
        assert!(allowed(&resp), "cold Check allowed: {resp:?}");
        let minted = minted_token(&resp).expect("the answer carries the minted token");
        minted.rsplit_once('.').expect("three parts").0.as_bytes().to_vec()
    };

    if op == "sizes" {
        // What a Check moves around: `block_on` (and tonic's boxing) copy its future by value.
        eprintln!("AuthzService::decide future: {} bytes", std::mem::size_of_val(&cold_svc.decide(check.clone())));
        return;
    }
    if op == "ratio" {
        // Each round times one block of 50 of each kind: the crypto ceiling
        // (verify + sign), cold Checks, cached Checks, and the ceiling's two
        // signatures each followed by a cached Check. A slow spell of a
        // shared machine slows every block of a round, so the medians of
        // the rounds' ratios hold where two runs minutes apart (criterion's)
        // do not. The last kind shows what the non-crypto code of a Check
        // costs when it runs right after signatures that evicted its caches,
        // as it does in a cold Check. Requests are cloned and answers dropped
        // outside the timing, as in `cold`.
        const BLOCK: usize = 50;
        let cached_svc = AuthzService::new(engine(true), metrics.clone());
        assert!(allowed(&rt.block_on(cached_svc.decide(check.clone()))), "cached Check allowed");
        let ceiling = || {
            rsa_pub.verify_sig(black_box(&subject_input), black_box(&rsa_sig)).unwrap();
            black_box(ec.sign(&rng, black_box(&minted_input)).unwrap());
        };
        let time_checks = |svc: &AuthzService, with_ceiling: bool| {
            let (reqs, mut answers) = (vec![check.clone(); BLOCK], Vec::with_capacity(BLOCK));
            let started = Instant::now();
            for r in reqs {
                if with_ceiling {
                    ceiling();
                }
                answers.push(rt.block_on(svc.decide(r)));
            }
            started.elapsed().as_secs_f64()
        };
        let time_ceiling = || {
            let started = Instant::now();
            for _ in 0..BLOCK {
                ceiling();
            }
            started.elapsed().as_secs_f64()
        };
        // Per kind: the block times (µs per run) and the ratios to the round's ceiling.
        const KINDS: [&str; 4] = ["ceiling", "cold", "cached", "ceiling + cached"];
        let (mut us, mut ratios): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (vec![Vec::new(); 4], vec![Vec::new(); 4]);
        for round in 0..WARM_UP + n {
            let mut took = [0.0; 4];
            // The kinds in a rotating order, so that none always runs first.
            for k in (0..4).map(|i| (i + round) % 4) {
                took[k] = match k {
                    0 => time_ceiling(),
                    1 => time_checks(&cold_svc, false),
                    2 => time_checks(&cached_svc, false),
                    _ => time_checks(&cached_svc, true),
                };
            }
            if round >= WARM_UP {
                for k in 0..4 {
                    us[k].push(took[k] * 1e6 / BLOCK as f64);
                    ratios[k].push(took[k] / took[0]);
                }
            }
        }
        let quartiles = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: usize| v.get(v.len() * q / 4).copied().unwrap_or(f64::NAN);
            (at(1), at(2), at(3))
        };
        println!("over {n} rounds of {BLOCK}-run blocks, medians (quartiles):");
        for k in 0..4 {
            let (_, t, _) = quartiles(&mut us[k]);
            let (r1, r2, r3) = quartiles(&mut ratios[k]);
            println!("  {:<17} {t:7.2} µs  ÷ ceiling {r2:.3} ({r1:.3}, {r3:.3})", KINDS[k]);
        }
        return;
    }
    let mut run: Box<dyn FnMut()> = match op.as_str() {
        // The requests are cloned and the answers dropped outside `measured`,
        // as criterion's `iter_batched` does.
        "cold" => {
            let (mut reqs, mut answers) = (vec![check; WARM_UP + n], Vec::with_capacity(WARM_UP + n));
            Box::new(move || answers.push(rt.block_on(cold_svc.decide(reqs.pop().expect("one per run")))))
        }
        "cached" => {
            let svc = AuthzService::new(engine(true), metrics);
            assert!(allowed(&rt.block_on(svc.decide(check.clone()))), "cached Check allowed");
            let (mut reqs, mut answers) = (vec![check; WARM_UP + n], Vec::with_capacity(WARM_UP + n));
            Box::new(move || answers.push(rt.block_on(svc.decide(reqs.pop().expect("one per run")))))
        }
        "ceiling" => Box::new(move || {
            rsa_pub.verify_sig(black_box(&subject_input), black_box(&rsa_sig)).unwrap();
            black_box(ec.sign(&rng, black_box(&minted_input)).unwrap());
        }),
        "ceiling+cached" => {
            let svc = AuthzService::new(engine(true), metrics);
            assert!(allowed(&rt.block_on(svc.decide(check.clone()))), "cached Check allowed");
            let (mut reqs, mut answers) = (vec![check; WARM_UP + n], Vec::with_capacity(WARM_UP + n));
            Box::new(move || {
                rsa_pub.verify_sig(black_box(&subject_input), black_box(&rsa_sig)).unwrap();
                black_box(ec.sign(&rng, black_box(&minted_input)).unwrap());
                answers.push(rt.block_on(svc.decide(reqs.pop().expect("one per run"))))
            })
        }
        "verify" => Box::new(move || rsa_pub.verify_sig(black_box(&subject_input), black_box(&rsa_sig)).unwrap()),
        "sign" => Box::new(move || {
            black_box(ec.sign(&rng, black_box(&minted_input)).unwrap());
        }),
        other => {
            panic!("unknown operation {other:?}: cold, cached, verify, sign, ceiling, ceiling+cached, ratio or sizes")
        }
    };

    let go = |run: &mut Box<dyn FnMut()>| {
        // Warm-up outside `measured`: lazy statics, callsite registration, the
        // allocator's first pages.
        for _ in 0..WARM_UP {
            run();
        }
        let started = Instant::now();
        for _ in 0..n {
            measured(&mut **run);
        }
        let took = started.elapsed();
        eprintln!("{op}: {n} runs, {:.2} µs each", took.as_secs_f64() * 1e6 / n.max(1) as f64);
    };
    if logged {
        let subscriber = telemetry::subscriber(false, tracing_subscriber::EnvFilter::new("info"), std::io::sink, None);
        tracing::subscriber::with_default(subscriber, || go(&mut run));
    } else {
        go(&mut run);
    }
}

/// The value of the header the minted token is written to.
fn minted_token(resp: &stsgate::pb::envoy::service::auth::v3::CheckResponse) -> Option<String> {
    use stsgate::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else { return None };
    let header = ok.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "authorization")?;
    Some(header.value.strip_prefix("Bearer ").unwrap_or(&header.value).to_owned())
}
