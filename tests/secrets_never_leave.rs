//! Secrets never leave (issue #13, part 4). The real `stsgate serve`, as a
//! child process logging at `RUST_LOG=trace` through its own subscriber,
//! with clients that hold secrets (a plain one from a file, an argon2id
//! hash), a `private_key_jwt` client, signing keys read from PEM files and
//! a trusted IdP whose JWKS also carries a symmetric key and a private JWK it
//! should never have published. A scripted run provokes every refusal at
//! both doors (gRPC Check and `POST /token`) and some successes; then every
//! log line, the `/metrics` text, and every refusal's status, description,
//! body and headers are searched for every token sent (whole, payload and
//! signature), every token minted, the client secrets, the PEM bodies and
//! private JWK members of every private key, and the HMAC keys. None may
//! appear; nor may anything shaped like a JWT.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;
use tonic::transport::Channel;

use stsgate::pb::envoy::service::auth::v3::CheckResponse;
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::check_response::HttpResponse;
use stsgate::testkit::CheckRequestBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ACTOR_HEADER: &str = "x-actor-token";
const SUBJECT_HEADER: &str = "x-requested-subject";

/// The plain secret `basic-client` reads from a file.
const PLAIN_SECRET: &str = "Pl41n-S3cr3t-7f3a1c5e9b2d4a6c";
/// The secret whose argon2id hash `post-client` holds.
const HASHED_SECRET: &str = "H4shed-S3cr3t-0c8e2b7a5d1f3e9a";
/// A wrong secret a client sends (also a secret: it may be someone's real one, mistyped).
const WRONG_SECRET: &str = "Wr0ng-S3cr3t-4b6d8f0a2c4e6a8c";
/// The HMAC key of an algorithm-confusion token.
const HMAC_SECRET: &str = "hm4c-k3y-5e7a9c1b3d5f7a9c1b3d5f7a";

/// A private key generated for the test: its PEM, and its JWK private
/// members (base64url) where the test can compute them.
struct PrivateKey {
    pem: String,
    private_members: Vec<String>,
}

fn ec_key() -> (EcdsaKeyPair, PrivateKey) {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec keygen");
    let der = kp.to_pkcs8v1().expect("pkcs8");
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    // The ECPrivateKey inside PKCS#8: version 1, then the 32-byte `d`.
    let at = der.as_ref().windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).expect("ECPrivateKey d");
    let d = &der.as_ref()[at + 5..at + 5 + 32];
    (kp, PrivateKey { pem, private_members: vec![URL_SAFE_NO_PAD.encode(d)] })
}

fn rsa_key() -> PrivateKey {
    let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa keygen");
    let der = AsDer::<Pkcs8V1Der<'_>>::as_der(&kp).expect("pkcs8");
    PrivateKey { pem: pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())), private_members: vec![] }
}

fn ec_public_jwk(kp: &EcdsaKeyPair, kid: &str) -> Value {
    let point = kp.public_key().as_ref();
    json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]) })
}

/// An ES256 JWS signed with `kp`.
fn es256(kp: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "ES256", "typ": "JWT", "kid": kid }).to_string());
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = kp.sign(&SystemRandom::new(), input.as_bytes()).expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn argon2id(secret: &str) -> String {
    let salt = SaltString::encode_b64(b"stsgate-secrets-salt").unwrap();
    argon2::Argon2::default().hash_password(secret.as_bytes(), &salt).unwrap().to_string()
}

/// Everything that must never leave stsgate, by name.
#[derive(Default)]
struct Secrets {
    items: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        // Short values (a part of a malformed token such as `a.b.c`) would match by chance.
        if value.len() >= 16 {
            self.items.push((what.into(), value));
        }
    }

    /// A token, its payload and its signature.
    fn token(&mut self, what: &str, token: &str) {
        self.add(format!("{what} (whole)"), token);
        let mut parts = token.split('.');
        let (_, payload, sig) = (parts.next(), parts.next(), parts.next());
        if let Some(p) = payload {
            self.add(format!("{what} (payload)"), p);
        }
        if let Some(s) = sig {
            self.add(format!("{what} (signature)"), s);
        }
    }

    /// A PEM private key: its base64 body (joined and line by line) and its JWK private members.
    fn key(&mut self, what: &str, key: &PrivateKey) {
        let body: Vec<&str> = key.pem.lines().filter(|l| !l.starts_with("-----")).collect();
        self.add(format!("{what} PEM body"), body.concat());
        for (i, line) in body.iter().enumerate() {
            self.add(format!("{what} PEM line {i}"), *line);
        }
        for (i, d) in key.private_members.iter().enumerate() {
            self.add(format!("{what} private JWK member {i}"), d.clone());
            let bytes = URL_SAFE_NO_PAD.decode(d).unwrap();
            self.add(format!("{what} private member {i} (base64)"), STANDARD.encode(&bytes));
            self.add(
                format!("{what} private member {i} (hex)"),
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            );
        }
    }
}

/// Where something stsgate said can be read.
struct Surface {
    what: String,
    text: String,
    /// An allowed answer, which carries the token it minted.
    carries_minted: bool,
}

struct Run {
    surfaces: Vec<Surface>,
    secrets: Secrets,
    /// Minted tokens (allowed only in the answer that carries them).
    minted: Vec<String>,
    /// (door, status, error code) of every refusal.
    refusals: BTreeSet<String>,
}

impl Run {
    fn said(&mut self, what: impl Into<String>, text: impl Into<String>, carries_minted: bool) {
        self.surfaces.push(Surface { what: what.into(), text: text.into(), carries_minted });
    }
}

struct Gate {
    grpc: AuthorizationClient<Channel>,
    http: reqwest::Client,
    base: String,
}

impl Gate {
    async fn check(&self, run: &mut Run, name: &str, build: CheckRequestBuilder) -> CheckResponse {
        let resp = self.grpc.clone().check(build.build()).await.expect("a CheckResponse").into_inner();
        match &resp.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                    let token = h.value.strip_prefix("Bearer ").unwrap_or(&h.value).to_owned();
                    run.secrets.token(&format!("token minted at Check {name}"), &token);
                    run.minted.push(token);
                }
                run.said(format!("Check {name} (allowed)"), format!("{resp:?}"), true);
            }
            Some(HttpResponse::DeniedResponse(d)) => {
                let body: Value = serde_json::from_str(&d.body).unwrap_or_default();
                let status = d.status.as_ref().map_or(0, |s| s.code);
                run.refusals.insert(format!("check {status} {}", body["error"].as_str().unwrap_or("-")));
                run.said(format!("Check {name} (refused)"), format!("{resp:?}"), false);
            }
            None => panic!("Check {name}: no http_response in {resp:?}"),
        }
        resp
    }

    async fn token(
        &self,
        run: &mut Run,
        name: &str,
        authorization: Option<&str>,
        pairs: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            body.append_pair(k, v);
        }
        let mut req = self
            .http
            .post(format!("{}/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.finish());
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        self.answer(run, name, req).await
    }

    async fn answer(&self, run: &mut Run, name: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("an answer from /token");
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        if status == 200 {
            let token = body["access_token"].as_str().expect("access_token").to_owned();
            run.secrets.token(&format!("token minted at /token {name}"), &token);
            run.minted.push(token);
            run.said(format!("/token {name} (allowed)"), format!("{status} {headers} {text}"), true);
        } else {
            run.refusals.insert(format!("token {status} {}", body["error"].as_str().unwrap_or("-")));
            run.said(format!("/token {name} (refused)"), format!("{status} {headers} {text}"), false);
        }
        (status, body)
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_metric_or_refusal_carries_a_secret() {
    init_logging();
    let idp = MockIdp::start().await;
    let idp_key = idp.key();
    let dir = TempDir::new("secrets");

    // stsgate's signing keys, from files.
    let (_, sts_ec) = ec_key();
    let sts_rsa = rsa_key();
    let ec_file = dir.write("sts-ec.pem", &sts_ec.pem);
    let rsa_file = dir.write("sts-rsa.pem", &sts_rsa.pem);
    // The private_key_jwt client's key (stsgate holds only its public half).
    let (client_kp, client_key) = ec_key();
    let client_jwks = json!({ "keys": [ec_public_jwk(&client_kp, "client-1")] });
    let secret_file = dir.write("basic.secret", format!("{PLAIN_SECRET}\n"));
    let hash = argon2id(HASHED_SECRET);

    // The IdP also publishes a symmetric key and, by mistake, a private JWK.
    let (leaked_kp, leaked_key) = ec_key();
    let mut private_jwk = ec_public_jwk(&leaked_kp, "oops-private");
    private_jwk["d"] = json!(leaked_key.private_members[0]);
    private_jwk["use"] = json!("enc");
    let oct_k = URL_SAFE_NO_PAD.encode(b"idp-hmac-key-never-to-be-used-5c3e");
    idp.set_junk(vec![json!({ "kty": "oct", "kid": "hmac-1", "k": oct_k }), private_jwk]);

    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let yaml = format!(
        "listen: {{ grpc: \"{grpc}\", http: \"{http}\" }}
issuer: {STS_ISSUER}
signing:
  active: sts-ec
  keys:
    - {{ kid: sts-ec, alg: ES256, file: \"{}\" }}
    - {{ kid: sts-rsa, alg: RS256, file: \"{}\" }}
tokens: {{ lifetime: 5m }}
trusted_issuers:
  - {{ issuer: \"{}\", discovery: true, algorithms: [RS256], unknown_kid_refetch_interval: 1s }}
ext_authz:
  actor: {{ mode: any, peer: true, token_header: {ACTOR_HEADER} }}
  requested_subject_header: {SUBJECT_HEADER}
rules:
  - {{ name: orders, match: {{ audiences: [orders] }}, grant: {{ scopes: [\"orders.*\"] }} }}
  - name: pay
    match: {{ audiences: [payments], actor: {{ spiffe: [\"spiffe://c/ns/a/*\"], sub: [svc-*] }} }}
    grant: {{ outcome: delegation, scopes: [\"pay.*\"] }}
  - name: imp
    match: {{ audiences: [admin], actor: {{ sub: [ops-*] }} }}
    grant: {{ outcome: impersonation, scopes: [\"*\"], impersonate_subjects: [\"user-*\"] }}
clients:
  - {{ client_id: basic-client, auth: client_secret_basic, secret_file: \"{}\" }}
  - {{ client_id: post-client, auth: client_secret_post, secret_hash: \"{hash}\" }}
  - {{ client_id: jwt-client, auth: private_key_jwt, jwks: {client_jwks} }}
token_endpoint: {{ client_failures_per_minute: 3 }}
",
        ec_file.display(),
        rsa_file.display(),
        idp.issuer,
        secret_file.display(),
    );
    let config = dir.write("config.yaml", &yaml);
    let (stdout, stderr) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let mut child = ChildGuard::spawn(
        "stsgate serve",
        Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "trace")
            .env_remove("STSGATE_CONFIG")
            .env_remove("STSGATE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap()),
    );
    let logs = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&stdout).unwrap_or_default(),
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.exited() {
            panic!("stsgate serve exited ({status}):\n{}", logs());
        }
        if client.get(format!("http://{http}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let gate = Gate { grpc: AuthorizationClient::new(channel), http: client.clone(), base: format!("http://{http}") };

    let mut run = Run { surfaces: vec![], secrets: Secrets::default(), minted: vec![], refusals: BTreeSet::new() };
    let s = &mut run.secrets;
    for (what, secret) in [
        ("plain client secret", PLAIN_SECRET),
        ("hashed client secret", HASHED_SECRET),
        ("wrong client secret", WRONG_SECRET),
        ("HMAC key of a forged token", HMAC_SECRET),
    ] {
        s.add(what, secret);
        s.add(format!("{what} (base64)"), STANDARD.encode(secret));
    }
    s.add("argon2id hash", hash.clone());
    s.add("argon2id hash (its digest)", hash.rsplit('$').next().unwrap());
    s.add("IdP oct key", oct_k.clone());
    s.add("basic client credentials", basic("basic-client", PLAIN_SECRET));
    s.key("stsgate ES256 signing key", &sts_ec);
    s.key("stsgate RS256 signing key", &sts_rsa);
    s.key("client private_key_jwt key", &client_key);
    s.key("IdP private JWK", &leaked_key);

    // The tokens of the run: good ones and one of each kind of bad one.
    let now = now();
    let claims = |sub: &str, scope: &str| {
        let mut c = idp.claims(sub, scope);
        c["jti"] = json!(format!("{sub}-{}", URL_SAFE_NO_PAD.encode(rand_bytes())));
        c
    };
    let alice = idp.token(&claims("alice", "orders.read orders.write pay.send"));
    let user = idp.token(&claims("user-7", "orders.read"));
    let svc = idp.token(&claims("svc-batch", "pay.send"));
    let ops = idp.token(&claims("ops-jane", "admin"));
    let with_claims = |mut c: Value, set: Value| {
        for (k, v) in set.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let expired = idp.token(&with_claims(claims("bob", "x"), json!({ "exp": now - 3600, "iat": now - 7200 })));
    let not_yet = idp.token(&with_claims(claims("bob", "x"), json!({ "nbf": now + 3600 })));
    let mut forged = alice.clone();
    forged.replace_range(forged.len() - 8.., "AAAAAAAA");
    let none = forge_none(&claims("mallory", "orders.read"));
    let hs256 = forge_hs256(HMAC_SECRET.as_bytes(), Some(&idp_key.kid), &claims("mallory", "orders.read"));
    let untrusted = {
        let (kp, _) = ec_key();
        let mut c = claims("eve", "orders.read");
        c["iss"] = json!("https://evil.example");
        es256(&kp, "evil-1", &c)
    };
    let rogue_key = idp.new_key(KeyKind::Rsa, "rogue-unpublished", false);
    let unknown_kid = rogue_key.token(&claims("alice", "orders.read"));
    let jwe_like = format!(
        "{}.{}.{}.{}.{}",
        b64(b"{\"alg\":\"RSA-OAEP\"}"),
        "QUJD".repeat(8),
        "REVG".repeat(8),
        "R0hJ".repeat(8),
        "SktM".repeat(8)
    );
    let padded = format!("{}.{}.{}", b64(b"{\"alg\":\"RS256\"}"), "eyJ".repeat(7000), "c2ln".repeat(10));
    let garbage = "not-a-jwt-but-a-secret-looking-string-8c1e4a".to_owned();
    let assertion_claims = |jti: &str, exp: i64| json!({ "iss": "jwt-client", "sub": "jwt-client", "aud": STS_ISSUER, "exp": exp, "iat": now, "jti": jti });
    let assertion = es256(&client_kp, "client-1", &assertion_claims("a-1-5f2e9c", now + 60));
    let assertion_replayed = assertion.clone();
    let assertion_expired = es256(&client_kp, "client-1", &assertion_claims("a-2-7d3a1b", now - 60));
    let assertion_forged = {
        let (kp, _) = ec_key();
        es256(&kp, "client-1", &assertion_claims("a-3-9e4c2d", now + 60))
    };
    let bearer_grant = idp.token(&claims("alice", "orders.read"));
    for (what, t) in [
        ("alice", &alice),
        ("user", &user),
        ("svc", &svc),
        ("ops", &ops),
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("forged signature", &forged),
        ("alg none", &none),
        ("hs256", &hs256),
        ("untrusted issuer", &untrusted),
        ("unknown kid", &unknown_kid),
        ("JWE-like", &jwe_like),
        ("oversized", &padded),
        ("garbage", &garbage),
        ("client assertion", &assertion),
        ("expired client assertion", &assertion_expired),
        ("forged client assertion", &assertion_forged),
        ("JWT bearer grant", &bearer_grant),
    ] {
        run.secrets.token(what, t);
    }

    // ---- The gRPC Check door ----
    let req = || CheckRequestBuilder::new().host("svc.test").pseudo_headers();
    let to = |token: &str, audience: &str| req().bearer(token).context("audience", audience);
    gate.check(&mut run, "success", to(&alice, "orders")).await;
    gate.check(&mut run, "success again (cached)", to(&alice, "orders")).await;
    gate.check(&mut run, "delegation", to(&alice, "payments").peer("spiffe://c/ns/a/sa/web")).await;
    gate.check(&mut run, "delegation by actor token", to(&alice, "payments").header(ACTOR_HEADER, &svc)).await;
    gate.check(
        &mut run,
        "impersonation",
        to(&user, "admin").header(ACTOR_HEADER, &ops).header(SUBJECT_HEADER, "user-9"),
    )
    .await;
    gate.check(&mut run, "no credential", req().context("audience", "orders")).await;
    gate.check(
        &mut run,
        "two tokens",
        req().header("authorization", format!("Bearer {alice} {user}")).context("audience", "orders"),
    )
    .await;
    gate.check(
        &mut run,
        "basic scheme",
        req().header("authorization", basic("basic-client", PLAIN_SECRET)).context("audience", "orders"),
    )
    .await;
    for (what, t) in [
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("forged signature", &forged),
        ("alg none", &none),
        ("hs256", &hs256),
        ("untrusted issuer", &untrusted),
        ("JWE-like", &jwe_like),
        ("oversized", &padded),
        ("garbage", &garbage),
        ("unknown kid", &unknown_kid),
    ] {
        gate.check(&mut run, what, to(t, "orders")).await;
        gate.check(&mut run, &format!("actor token {what}"), to(&alice, "payments").header(ACTOR_HEADER, t)).await;
    }
    gate.check(&mut run, "no rule for the audience", to(&alice, "nowhere")).await;
    gate.check(&mut run, "no audience", req().bearer(&alice)).await;
    gate.check(&mut run, "no scope", to(&alice, "orders").context("scope", "admin")).await;
    gate.check(
        &mut run,
        "actor conflict",
        to(&alice, "payments").peer("spiffe://c/ns/a/sa/web").header(ACTOR_HEADER, &svc),
    )
    .await;
    gate.check(
        &mut run,
        "impersonation refused",
        to(&alice, "admin").header(ACTOR_HEADER, &ops).header(SUBJECT_HEADER, "root"),
    )
    .await;
    gate.check(
        &mut run,
        "bad requested subject",
        to(&user, "admin").header(ACTOR_HEADER, &ops).header(SUBJECT_HEADER, "a,b"),
    )
    .await;
    gate.check(&mut run, "bad actor header", to(&alice, "payments").header(ACTOR_HEADER, format!("{svc} {svc}"))).await;
    gate.check(&mut run, "bad actor mode", to(&alice, "payments").context("actor", "everyone")).await;

    // ---- The token endpoint ----
    let exchange =
        |token: &'static str| vec![("grant_type", GRANT), ("subject_token", token), ("subject_token_type", AT)];
    let leak = |s: &String| -> &'static str { Box::leak(s.clone().into_boxed_str()) };
    let (alice_s, svc_s, ops_s, user_s) = (leak(&alice), leak(&svc), leak(&ops), leak(&user));
    let basic_ok = basic("basic-client", PLAIN_SECRET);
    let with = |mut v: Vec<(&'static str, &'static str)>, extra: &[(&'static str, &'static str)]| {
        v.extend_from_slice(extra);
        v
    };
    gate.token(&mut run, "success (basic)", Some(&basic_ok), &with(exchange(alice_s), &[("audience", "orders")])).await;
    gate.token(
        &mut run,
        "success (post)",
        None,
        &with(
            exchange(alice_s),
            &[("audience", "orders"), ("client_id", "post-client"), ("client_secret", HASHED_SECRET)],
        ),
    )
    .await;
    let a = leak(&assertion);
    gate.token(
        &mut run,
        "success (private_key_jwt)",
        None,
        &with(
            exchange(alice_s),
            &[("audience", "orders"), ("client_assertion_type", ASSERTION_TYPE), ("client_assertion", a)],
        ),
    )
    .await;
    gate.token(
        &mut run,
        "delegation",
        Some(&basic_ok),
        &with(exchange(alice_s), &[("audience", "payments"), ("actor_token", svc_s), ("actor_token_type", AT)]),
    )
    .await;
    gate.token(
        &mut run,
        "impersonation",
        Some(&basic_ok),
        &with(
            exchange(user_s),
            &[("audience", "admin"), ("actor_token", ops_s), ("actor_token_type", AT), ("requested_subject", "user-3")],
        ),
    )
    .await;
    // Refusals.
    gate.answer(&mut run, "GET", gate.http.get(format!("{}/token", gate.base)).header("authorization", &basic_ok))
        .await;
    let huge = format!("grant_type={GRANT}&subject_token={}", "eyJ".repeat(30_000));
    gate.answer(
        &mut run,
        "too large",
        gate.http
            .post(format!("{}/token", gate.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", &basic_ok)
            .body(huge),
    )
    .await;
    gate.token(
        &mut run,
        "unsupported grant",
        Some(&basic_ok),
        &[("grant_type", "password"), ("password", WRONG_SECRET)],
    )
    .await;
    gate.token(&mut run, "no subject token", Some(&basic_ok), &[("grant_type", GRANT), ("audience", "orders")]).await;
    gate.token(
        &mut run,
        "repeated parameter",
        Some(&basic_ok),
        &with(exchange(alice_s), &[("scope", "a"), ("scope", "b")]),
    )
    .await;
    gate.token(
        &mut run,
        "unknown token type",
        Some(&basic_ok),
        &[
            ("grant_type", GRANT),
            ("subject_token", alice_s),
            ("subject_token_type", "urn:x:secret"),
            ("audience", "orders"),
        ],
    )
    .await;
    for (what, t) in [
        ("expired", &expired),
        ("forged signature", &forged),
        ("alg none", &none),
        ("hs256", &hs256),
        ("untrusted issuer", &untrusted),
        ("JWE-like", &jwe_like),
        ("garbage", &garbage),
        ("unknown kid", &unknown_kid),
    ] {
        let t = leak(t);
        gate.token(&mut run, what, Some(&basic_ok), &with(exchange(t), &[("audience", "orders")])).await;
        gate.token(
            &mut run,
            &format!("actor token {what}"),
            Some(&basic_ok),
            &with(exchange(alice_s), &[("audience", "payments"), ("actor_token", t), ("actor_token_type", AT)]),
        )
        .await;
    }
    gate.token(&mut run, "no rule", Some(&basic_ok), &with(exchange(alice_s), &[("audience", "nowhere")])).await;
    gate.token(
        &mut run,
        "two audiences",
        Some(&basic_ok),
        &with(exchange(alice_s), &[("audience", "orders"), ("audience", "admin")]),
    )
    .await;
    gate.token(
        &mut run,
        "no scope",
        Some(&basic_ok),
        &with(exchange(alice_s), &[("audience", "orders"), ("scope", "admin")]),
    )
    .await;
    gate.token(
        &mut run,
        "impersonation refused",
        Some(&basic_ok),
        &with(
            exchange(alice_s),
            &[("audience", "admin"), ("actor_token", ops_s), ("actor_token_type", AT), ("requested_subject", "root")],
        ),
    )
    .await;
    // Client authentication failures, then the rate limit.
    gate.token(&mut run, "no client", None, &with(exchange(alice_s), &[("audience", "orders")])).await;
    gate.token(
        &mut run,
        "unknown client",
        Some(&basic("nobody", WRONG_SECRET)),
        &with(exchange(alice_s), &[("audience", "orders")]),
    )
    .await;
    gate.token(
        &mut run,
        "bad basic header",
        Some("Basic !!!not-base64"),
        &with(exchange(alice_s), &[("audience", "orders")]),
    )
    .await;
    gate.token(
        &mut run,
        "wrong method",
        None,
        &with(
            exchange(alice_s),
            &[("audience", "orders"), ("client_id", "basic-client"), ("client_secret", PLAIN_SECRET)],
        ),
    )
    .await;
    for (what, a) in [
        ("replayed", &assertion_replayed),
        ("expired", &assertion_expired),
        ("forged", &assertion_forged),
        ("garbage", &garbage),
    ] {
        let a = leak(a);
        gate.token(
            &mut run,
            &format!("{what} client assertion"),
            None,
            &with(
                exchange(alice_s),
                &[("audience", "orders"), ("client_assertion_type", ASSERTION_TYPE), ("client_assertion", a)],
            ),
        )
        .await;
    }
    let bearer = leak(&bearer_grant);
    gate.token(
        &mut run,
        "JWT bearer grant, forged",
        Some(&basic_ok),
        &[("grant_type", JWT_BEARER), ("assertion", leak(&forged)), ("audience", "orders")],
    )
    .await;
    gate.token(
        &mut run,
        "JWT bearer grant",
        Some(&basic_ok),
        &[("grant_type", JWT_BEARER), ("assertion", bearer), ("audience", "orders")],
    )
    .await;
    for i in 0..6 {
        let pairs = with(
            exchange(alice_s),
            &[("audience", "orders"), ("client_id", "post-client"), ("client_secret", WRONG_SECRET)],
        );
        let (status, _) = gate.token(&mut run, &format!("wrong secret #{i}"), None, &pairs).await;
        if status == 429 {
            break;
        }
    }
    // Keys unavailable: the IdP is down when an unknown kid makes stsgate re-fetch.
    idp.down();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown_again = leak(&rogue_key.token(&claims("alice", "orders.read")));
    run.secrets.token("unknown kid while the IdP is down", unknown_again);
    gate.check(&mut run, "keys unavailable", to(unknown_again, "orders")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gate.token(
        &mut run,
        "keys unavailable",
        Some(&basic_ok),
        &with(exchange(unknown_again), &[("audience", "orders")]),
    )
    .await;
    idp.up();

    // ---- What stsgate said ----
    let metrics = client.get(format!("http://{http}/metrics")).send().await.unwrap().text().await.unwrap();
    run.said("/metrics", metrics, false);
    // Let the last log lines reach the file, then stop the process so all are flushed.
    child.terminate(Duration::from_secs(5));
    // Without the terminal colours, which could split a value in two.
    let logs = strip_ansi(&logs());
    assert!(logs.contains("TRACE"), "the run logged at trace level");
    assert!(logs.lines().count() > 200, "a trace-level run logs a lot: {} lines", logs.lines().count());
    // The log holds the refusals (so a leak in them would be seen), from
    // stsgate and from the libraries it logs through.
    for needle in
        ["reason=\"bad_signature\"", "reason=\"client_rate_limited\"", "reason=\"keys_unavailable\"", " h2::", " hyper"]
    {
        assert!(logs.contains(needle), "the log has no {needle:?}");
    }
    eprintln!("{} log lines, {} bytes", logs.lines().count(), logs.len());
    run.said("the log", logs, false);

    eprintln!("refusals provoked: {:#?}", run.refusals);
    // Every refusal class at each door (Check: RFC 6750 codes; /token: RFC 6749 §5.2).
    for expected in [
        // No credential: a bare challenge (RFC 6750 §3.1), the body says `unauthorized`.
        "check 401 unauthorized",
        "check 401 invalid_request",
        "check 401 invalid_token",
        "check 400 invalid_request",
        "check 403 invalid_target",
        "check 403 invalid_scope",
        "check 403 access_denied",
        "check 503 temporarily_unavailable",
        "token 405 invalid_request",
        "token 413 invalid_request",
        "token 400 unsupported_grant_type",
        "token 400 invalid_request",
        "token 400 invalid_grant",
        "token 400 invalid_target",
        "token 400 invalid_scope",
        "token 403 access_denied",
        "token 401 invalid_client",
        "token 429 invalid_client",
        "token 503 temporarily_unavailable",
    ] {
        assert!(run.refusals.contains(expected), "the run never provoked {expected:?}: {:#?}", run.refusals);
    }
    assert!(run.minted.len() >= 9, "the successes minted: {}", run.minted.len());

    // The detectors detect.
    assert!(jwt_shaped(&format!("x {alice} y")).is_some() && jwt_shaped("eyJhbGciOi no dot").is_none());
    let mut leaks = Vec::new();
    for surface in &run.surfaces {
        for (what, secret) in &run.secrets.items {
            let minted_here = surface.carries_minted && run.minted.iter().any(|m| m.contains(secret.as_str()));
            if !minted_here && surface.text.contains(secret.as_str()) {
                leaks.push(format!("{what} in {}", surface.what));
            }
        }
        if !surface.carries_minted {
            if let Some(at) = jwt_shaped(&surface.text) {
                let line = surface.text[..at].rfind('\n').map_or(0, |n| n + 1);
                let end = surface.text[at..].find('\n').map_or(surface.text.len(), |n| at + n);
                leaks.push(format!(
                    "a JWT-shaped string in {}: {}",
                    surface.what,
                    &surface.text[line..end.min(line + 400)]
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets left stsgate:\n{}", leaks.join("\n"));
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn rand_bytes() -> [u8; 9] {
    let mut b = [0u8; 9];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// Where the first `eyJ...` (base64url of `{"`) run of 16 or more characters
/// followed by a `.` starts: a JWS header or payload, if anything.
fn jwt_shaped(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ").map(|i| from + i) {
        let run = bytes[i..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_').count();
        if run >= 16 && bytes.get(i + run) == Some(&b'.') {
            return Some(i);
        }
        from = i + 3;
    }
    None
}
