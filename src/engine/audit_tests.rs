//! The impersonation audit record is written only for a token that was
//! minted, names both issuers and the minted `jti`; a lifetime cut to nothing
//! by the actor token's `exp` blames the actor token (security review, #9).

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::actor::ResolvedActor;
use super::mint::new_jti;
use super::*;
use crate::config::{Config, SignAlg};
use crate::signing::Signer;
use crate::trust::issuer::http_client;

const IDP_A: &str = "https://idp-a.test";
const IDP_B: &str = "https://idp-b.test";

/// An engine trusting two IdPs (local JWKS files), whose keys it has loaded,
/// and the IdPs' signing keys.
struct Fixture {
    engine: Engine,
    idp_a: Signer,
    idp_b: Signer,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture() -> Fixture {
    crate::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("stsgate-audit-{}-{}", std::process::id(), new_jti().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    let (idp_a, idp_b) =
        (Signer::generate("a", SignAlg::ES256).unwrap(), Signer::generate("b", SignAlg::ES256).unwrap());
    for (name, key) in [("a.json", &idp_a), ("b.json", &idp_b)] {
        std::fs::write(dir.join(name), json!({"keys": [key.public_jwk()]}).to_string()).unwrap();
    }
    let yaml = format!(
        r#"
issuer: https://sts.test
signing: {{ keys: [{{ kid: sts, ephemeral: true }}] }}
trusted_issuers:
  - {{ issuer: "{IDP_A}", jwks_file: "{a}", algorithms: [ES256], leeway: 60s }}
  - {{ issuer: "{IDP_B}", jwks_file: "{b}", algorithms: [ES256], leeway: 60s }}
ext_authz: {{ requested_subject_header: x-requested-subject }}
audit: {{ file: "{events}" }}
rules:
  - name: support
    match:
      issuers: ["{IDP_A}"]
      actor: {{ issuers: ["{IDP_A}", "{IDP_B}"], sub: [support-console] }}
    grant: {{ outcome: impersonation, scopes: ["*"], allow_empty_scope: true, impersonate_subjects: ["user-*"] }}
"#,
        a = dir.join("a.json").display(),
        b = dir.join("b.json").display(),
        events = dir.join("audit.jsonl").display(),
    );
    let cfg = Arc::new(Config::from_yaml_validated(&yaml).unwrap());
    let engine = Engine::load(cfg, http_client().unwrap(), None).unwrap();
    assert!(engine.fetch_issuer_keys().await.is_empty());
    Fixture { engine, idp_a, idp_b, _dir: TempDir(dir) }
}

impl Fixture {
    /// The audit events written so far.
    fn events(&self) -> Vec<serde_json::Value> {
        assert!(self.engine.audit.flush(std::time::Duration::from_secs(5)), "audit writer flushed");
        let text = std::fs::read_to_string(self._dir.0.join("audit.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn token(key: &Signer, iss: &str, sub: &str, exp: i64) -> String {
    let now = now_unix();
    key.sign_access_token(
        &json!({"iss": iss, "sub": sub, "iat": now - 5, "exp": exp, "client_id": format!("{sub}-app")}),
    )
    .unwrap()
}

/// Everything logged while `f` runs on this thread.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `subject`'s holder, through `actor`, asks to become user-123 towards orders.
fn impersonating_user_123(subject: &str, actor: ResolvedActor) -> ExchangeRequest<'_> {
    ExchangeRequest {
        subject_token: subject,
        audience: "orders",
        scopes: None,
        default_client_id: "stsgate",
        actor: actor.actor,
        requested_subject: Some("user-123"),
        actor_exp: actor.exp,
        client: None,
        origin: Default::default(),
    }
}

#[test]
fn audit_is_written_after_minting_with_jti_and_both_issuers() {
    let rt = runtime();
    let f = rt.block_on(fixture());
    let now = now_unix();
    let subject = token(&f.idp_a, IDP_A, "operator", now + 600);
    let console = token(&f.idp_b, IDP_B, "support-console", now + 600);
    let actor = rt.block_on(f.engine.resolve_actor(None, Some(&console))).unwrap();
    let req = impersonating_user_123(&subject, actor);
    let (done, log) = logged(|| rt.block_on(f.engine.exchange(&req)));
    let done = done.unwrap();
    let claims = done.claims_json();
    let jti = claims["jti"].as_str().unwrap();
    let audit = done.audit().expect("impersonation is audited");
    for needle in [
        format!("minted jti {jti:?}"),
        format!("actor \"support-console\" (issuer {IDP_B:?})"),
        format!("token subject \"operator\", issuer {IDP_A:?}"),
    ] {
        assert!(audit.contains(&needle), "{needle} not in {audit}");
    }
    // The audit event is on the stream of its own, whatever the log level.
    assert!(!log.contains("impersonation"), "not an info log line: {log}");
    let events = f.events();
    assert_eq!(events.len(), 1, "written once: {events:?}");
    let e = &events[0];
    assert_eq!(
        (&e["event"], &e["decision"], &e["rule"], &e["jti"]),
        (&json!("minted"), &json!("impersonation"), &json!("support"), &json!(jti))
    );
    assert_eq!(e["subject"], json!({"sub": "operator", "iss": IDP_A}));
    assert_eq!(e["actor_chain"], json!([{"sub": "support-console", "iss": IDP_B}]));
    assert_eq!(e["requested_subject"], "user-123");
    // What the audit says is what was minted; the actor token's client is its own issuer's.
    assert_eq!(claims["sub"], "user-123");
    assert_eq!(claims["sub_id"], json!({"format": "iss_sub", "iss": IDP_A, "sub": "user-123"}));
    assert_eq!(claims["client_id"], "support-console-app");

    // A dry run (`exchange_validated`, as `stsgate explain` uses it) writes nothing.
    let validated = rt.block_on(f.engine.validate(&subject, now, 0)).unwrap();
    let (done, log) =
        logged(|| f.engine.exchange_validated(&validated, &req, now).map(|d| d.audit().map(str::to_owned)));
    assert!(done.unwrap().is_some());
    assert!(!log.contains("stsgate::audit"), "{log}");
    assert_eq!(f.events().len(), 1, "a dry run writes no event");
}

#[test]
fn an_actor_token_expiring_inside_the_leeway_is_named_and_nothing_is_audited() {
    let rt = runtime();
    let f = rt.block_on(fixture());
    let now = now_unix();
    let subject = token(&f.idp_a, IDP_A, "operator", now + 600);
    // Expired 10s ago: still valid inside the 60s leeway, but nothing is left to hand on.
    let console = token(&f.idp_a, IDP_A, "support-console", now - 10);
    let actor = rt.block_on(f.engine.resolve_actor(None, Some(&console))).unwrap();
    let req = impersonating_user_123(&subject, actor);
    let (got, log) = logged(|| rt.block_on(f.engine.exchange(&req)));
    let err = got.unwrap_err();
    assert!(matches!(err, ExchangeError::ActorToken(TokenError::Expired)), "{err:?}");
    assert_eq!(err.to_string(), "invalid actor token: token has expired");
    assert!(!log.contains("stsgate::audit") && !log.contains("impersonation"), "nothing audited: {log}");
    assert!(f.events().is_empty(), "a token that ran out is no audit event");

    // The subject token running out inside its leeway still blames the subject token.
    let stale = token(&f.idp_a, IDP_A, "operator", now - 10);
    let req = ExchangeRequest { subject_token: &stale, ..req };
    let err = rt.block_on(f.engine.exchange(&req)).unwrap_err();
    assert!(matches!(err, ExchangeError::Token(TokenError::Expired)), "{err:?}");
}
