//! Memory per token is bounded (issue #13, part 2): a subject token of
//! `tokens.max_token_bytes` (16 KiB) shaped to make JSON parsing expensive
//! (thousands of tiny values, members or objects, deep nesting) costs no more
//! than a fixed multiple of a normal ~1 KiB token, counted in bytes
//! allocated by `Validator::validate_at`. A counting global allocator, so
//! this is its own test binary; allocation, not time, so nothing here
//! depends on the machine's speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use stsgate::clock::now_unix;
use stsgate::config::{Config, SignAlg};
use stsgate::signing::Signer;
use stsgate::trust::issuer::{Issuers, http_client};
use stsgate::trust::validator::{TokenError, Validator};

/// Counts the bytes allocated on the thread that switched counting on.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
/// Bytes live now and at most, since counting was switched on (frees of
/// blocks allocated before count against `LIVE`, which may then wrap: only
/// `PEAK` is read, and only as a figure).
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed).wrapping_add(by);
    if (live as isize) > 0 {
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}
thread_local! {
    static COUNTING: AtomicBool = const { AtomicBool::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(|c| c.load(Ordering::Relaxed)).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
            grow(layout.size());
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            // A grown block is counted at its new size, as a fresh allocation would be.
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const IDP: &str = "https://idp.test";
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// What any 16 KiB token may cost, as a multiple of a normal (570-byte)
/// token: the costliest shape the validator's JSON bounds let through (2,000
/// audiences) costs about 66 times (without the bounds: 700 times). Claims
/// stsgate has no field for, and `aud`, stay in the claims' text, so a
/// normal token allocates ~690 bytes (was ~1,480) and the costliest shape
/// ~45 KB (was ~152 KB, 2,000 values built): 70 times the new figure is a
/// far tighter bound in bytes than the former 110 times the old.
const MAX_RATIO: usize = 70;
/// ... and as a multiple of a benign 16 KiB token (hundreds of groups).
const MAX_RATIO_TO_BENIGN: usize = 4;

struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: Validator,
    key: Signer,
    _dir: Dir,
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> Fixture {
    stsgate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = Dir(std::env::temp_dir().join(format!("stsgate-parse-bounds-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let key = Signer::generate("k1", SignAlg::ES256).expect("IdP key");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [key.public_jwk()] }).to_string()).expect("JWKS");
    let yaml = format!(
        "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: s, alg: ES256, ephemeral: true }}]\n\
         tokens: {{ max_token_bytes: {MAX_TOKEN_BYTES} }}\n\
         trusted_issuers:\n  - {{ issuer: {IDP}, jwks_file: {}, algorithms: [ES256] }}\n\
         rules:\n  - {{ name: r, grant: {{ scopes: [\"*\"] }} }}\n",
        jwks.display()
    );
    let cfg = Config::from_yaml_validated(&yaml).expect("config");
    let issuers = Arc::new(Issuers::new(&cfg, http_client().expect("http client")));
    rt.block_on(issuers.get(IDP).expect("issuer").refresh()).expect("load JWKS");
    let validator = Validator::new(issuers, cfg.tokens.max_token_bytes);
    Fixture { rt, validator, key, _dir: dir }
}

/// Bytes allocated validating `token` (every allocation and growth, so
/// also a measure of work), and the result; prints the peak held too.
fn cost(f: &Fixture, token: &str) -> (usize, Result<(), TokenError>) {
    let now = now_unix();
    ALLOCATED.store(0, Ordering::Relaxed);
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.store(true, Ordering::Relaxed));
    let result = f.rt.block_on(f.validator.validate_at(token, now)).map(drop);
    COUNTING.with(|c| c.store(false, Ordering::Relaxed));
    eprint!("[peak {} B] ", PEAK.load(Ordering::Relaxed));
    (ALLOCATED.load(Ordering::Relaxed), result)
}

fn base_claims() -> Value {
    let now = now_unix();
    json!({
        "iss": IDP,
        "sub": "user-000001",
        "aud": ["mesh-gateway", "account"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": "4f1c2a8e-6a4b-4d1e-9b7a-2f0e8c1d3b5a",
        "scope": "openid profile email orders.read orders.write",
        "client_id": "web-frontend",
        "groups": ["customers", "staff"],
        "email": "user-000001@example.com",
    })
}

/// A validly signed token whose claim `name` is `open`, then `unit(i)` for
/// i = 0, 1, ... comma-separated, then `close`, filled until the token is
/// just under the size limit.
fn filled(f: &Fixture, name: &str, open: &str, unit: impl Fn(usize) -> String, close: &str) -> String {
    let mut claims = base_claims();
    claims[name] = json!("@@FILL@@");
    let template = serde_json::to_string(&claims).expect("claims");
    let short = f.key.sign_typed("JWT", &claims).expect("sign");
    // base64url: 4 bytes per 3; leave room for rounding.
    let budget = (MAX_TOKEN_BYTES - short.len()) * 3 / 4 - 4;
    let mut fill = String::from(open);
    for i in 0.. {
        let unit = unit(i);
        if fill.len() + unit.len() + 1 + close.len() >= budget {
            break;
        }
        if i > 0 {
            fill.push(',');
        }
        fill.push_str(&unit);
    }
    fill.push_str(close);
    let text = template.replace("\"@@FILL@@\"", &fill);
    let payload: Value = serde_json::from_str(&text).expect("the filled claims are JSON");
    let token = f.key.sign_typed("JWT", &payload).expect("sign");
    assert!(token.len() <= MAX_TOKEN_BYTES, "{name}: {} bytes", token.len());
    assert!(token.len() > MAX_TOKEN_BYTES - 400, "{name}: only {} bytes", token.len());
    token
}

/// A validly signed token whose claim `name` is `open`, `n` units, `close`,
/// padded with one long string claim to just under the size limit: the
/// costliest shapes that stay within the validator's JSON bounds.
fn shaped(f: &Fixture, name: &str, open: &str, unit: impl Fn(usize) -> String, n: usize, close: &str) -> String {
    let mut claims = base_claims();
    let text = format!("{open}{}{close}", (0..n).map(unit).collect::<Vec<_>>().join(","));
    claims[name] = serde_json::from_str(&text).expect("JSON");
    claims["pad"] = json!("");
    let short = f.key.sign_typed("JWT", &claims).expect("sign").len();
    claims["pad"] = json!("x".repeat((MAX_TOKEN_BYTES - short) * 3 / 4 - 4));
    let token = f.key.sign_typed("JWT", &claims).expect("sign");
    assert!(token.len() <= MAX_TOKEN_BYTES && token.len() > MAX_TOKEN_BYTES - 64, "{name}: {} bytes", token.len());
    token
}

fn same(unit: &'static str) -> impl Fn(usize) -> String {
    move |_| unit.to_owned()
}

#[test]
fn a_16k_token_costs_a_bounded_multiple_of_a_normal_one() {
    let f = fixture();
    let normal = f.key.sign_typed("JWT", &base_claims()).expect("sign");
    let (normal_cost, ok) = cost(&f, &normal);
    ok.expect("the normal token validates");
    // A big token that real IdPs send (hundreds of groups) still validates.
    let groups = filled(&f, "groups", "[", |i| format!("\"corp-department-group-{i:04}\""), "]");
    let (groups_cost, ok) = cost(&f, &groups);
    ok.expect("a token with hundreds of groups validates");
    eprintln!("normal token: {} bytes, {normal_cost} bytes allocated", normal.len());
    eprintln!("16 KiB of groups: {groups_cost} bytes allocated ({}x)", groups_cost / normal_cost);

    let hostile = [
        ("zeros", filled(&f, "a", "[", same("0"), "]")),
        ("empty strings", filled(&f, "a", "[", same("\"\""), "]")),
        ("one-member objects", filled(&f, "a", "[", same("{\"a\":0}"), "]")),
        ("empty arrays", filled(&f, "a", "[", same("[]"), "]")),
        ("members", filled(&f, "a", "{", |i| format!("\"{i:x}\":0"), "}")),
        ("top-level members", filled(&f, "a", "0,", |i| format!("\"{i:x}\":0"), "")),
        ("nested arrays", filled(&f, "a", "[", |_| format!("{}0{}", "[".repeat(100), "]".repeat(100)), "]")),
        ("audiences", filled(&f, "aud", "[", same("\"a\""), "]")),
        ("scp", filled(&f, "scp", "[", same("\"a\""), "]")),
        ("act objects", filled(&f, "act", "{\"sub\":\"x\",\"a\":[", same("{\"a\":0}"), "]}")),
    ];
    // The costliest shapes the bounds still let through: validated in full.
    let within = [
        ("2000 zeros", shaped(&f, "a", "[", same("0"), 2000, "]")),
        ("2000 empty strings", shaped(&f, "a", "[", same("\"\""), 2000, "]")),
        ("120 one-member objects", shaped(&f, "a", "[", |i| format!("{{\"{i}\":0}}"), 120, "]")),
        ("490 members", shaped(&f, "a", "{", |i| format!("\"{i}\":0"), 490, "}")),
        ("4 arrays nested 30 deep", shaped(&f, "a", "[", |_| format!("{}0{}", "[".repeat(29), "]".repeat(29)), 4, "]")),
        ("2000 audiences", shaped(&f, "aud", "[", same("\"a\""), 2000, "]")),
    ];
    let mut worst_within = 0;
    for (what, token) in &within {
        let (bytes, result) = cost(&f, token);
        eprintln!("16 KiB with {what}: {bytes} bytes allocated ({}x): {result:?}", bytes / normal_cost);
        assert!(result.is_ok(), "{what}: within the bounds, validated: {result:?}");
        worst_within = worst_within.max(bytes);
        assert!(
            bytes <= MAX_RATIO * normal_cost,
            "16 KiB with {what} allocated {bytes} bytes, more than {MAX_RATIO} x {normal_cost} (a normal token)"
        );
    }

    let mut worst = 0;
    for (what, token) in &hostile {
        let (bytes, result) = cost(&f, token);
        eprintln!("16 KiB of {what}: {bytes} bytes allocated ({}x): {result:?}", bytes / normal_cost);
        worst = worst.max(bytes);
        assert!(
            bytes <= MAX_RATIO * normal_cost,
            "16 KiB of {what} allocated {bytes} bytes, more than {MAX_RATIO} x {normal_cost} (a normal token)"
        );
    }
    assert!(groups_cost <= MAX_RATIO * normal_cost, "16 KiB of groups allocated {groups_cost} bytes");
    eprintln!("worst refused: {worst} bytes, {}x a normal token", worst / normal_cost);
    eprintln!("worst validated: {worst_within} bytes, {}x a normal token", worst_within / normal_cost);
    assert!(
        worst.max(worst_within) <= MAX_RATIO_TO_BENIGN * groups_cost,
        "the costliest 16 KiB token allocated {} bytes, more than {MAX_RATIO_TO_BENIGN} x {groups_cost} (16 KiB of groups)",
        worst.max(worst_within)
    );
}
