//! Whole-configuration tests; each section's own are in its file.

use std::time::Duration;

use super::*;

/// The smallest valid configuration; the sections' tests add to it.
pub(super) const MINIMAL: &str = r#"
issuer: https://sts.example.com
signing:
  keys:
    - kid: k1
      ephemeral: true
trusted_issuers:
  - issuer: https://idp.example.com
    jwks_url: https://idp.example.com/jwks
rules:
  - name: all
    grant: { scopes: ["*"] }
"#;

/// Every problem `check` finds in a configuration text, as printed.
pub(super) fn issues_in(text: &str) -> Vec<String> {
    Config::from_yaml_str(text).unwrap().check().err().unwrap_or_default().iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_config_is_valid_with_defaults() {
    let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
    assert_eq!(cfg.listen.grpc.port(), 9191);
    assert_eq!(cfg.listen.http.port(), 8080);
    assert_eq!(cfg.ext_authz.subject_header, "authorization");
    assert_eq!(cfg.trusted_issuers[0].algorithms, vec![VerifyAlg::RS256]);
    assert_eq!(cfg.active_kid(), "k1");
    assert_eq!(cfg.tokens.lifetime.0, Duration::from_secs(300));
}

#[test]
fn sections_left_out_take_their_defaults() {
    let cfg = Config::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(cfg.listen, Listen::default());
    assert_eq!(cfg.tokens, Tokens::default());
    assert_eq!(cfg.ext_authz, ExtAuthz::default());
    assert_eq!(cfg.token_endpoint, TokenEndpoint::default());
    assert_eq!(cfg.cache, CacheConfig::default());
    assert_eq!(cfg.dev_idp, None);
    // Written as empty maps, they take the same.
    let empty = "listen: {}\ntokens: {}\next_authz: {}\ntoken_endpoint: {}\ncache: {}\n";
    let cfg = Config::from_yaml_str(&format!("{empty}{MINIMAL}")).unwrap();
    assert_eq!(cfg.listen, Listen::default());
    assert_eq!(cfg.tokens, Tokens::default());
    assert_eq!(cfg.ext_authz, ExtAuthz::default());
    assert_eq!(cfg.token_endpoint, TokenEndpoint::default());
    assert_eq!(cfg.cache, CacheConfig::default());
}

#[test]
fn required_keys_stay_required() {
    for (from, to, missing) in [
        ("issuer: https://sts.example.com\n", "", "issuer"),
        ("  keys:\n    - kid: k1\n      ephemeral: true\n", "  active: k1\n", "keys"),
        ("    - kid: k1\n      ephemeral: true\n", "    - ephemeral: true\n", "kid"),
        ("  - issuer: https://idp.example.com\n", "  -\n", "issuer"),
        ("  - name: all\n    grant:", "  - grant:", "name"),
    ] {
        let text = MINIMAL.replace(from, to);
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains(&format!("missing field `{missing}`")), "{missing}: {err}");
    }
    let text = format!("ext_authz: {{ routes: [{{ path_prefix: / }}] }}\n{MINIMAL}");
    let err = Config::from_yaml_str(&text).unwrap_err().to_string();
    assert!(err.contains("ext_authz.routes[0]") && err.contains("missing field `audience`"), "{err}");
    let text = MINIMAL.replace("{ scopes: [\"*\"] }", "{ scopes: [\"*\"], downstream_tokens: [{ audience: a }] }");
    let err = Config::from_yaml_str(&text).unwrap_err().to_string();
    assert!(err.contains("missing field `header`"), "{err}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let text = MINIMAL.replace("    jwks_url:", "    jwks_ulr:");
    let err = Config::from_yaml_str(&text).unwrap_err().to_string();
    assert!(err.contains("trusted_issuers[0]"), "{err}");
    assert!(err.contains("jwks_ulr"), "{err}");
    assert!(err.contains("line"), "{err}");
    // Every section refuses unknown keys.
    for section in ["listen", "tokens", "ext_authz", "token_endpoint", "cache", "dev_idp"] {
        let err = Config::from_yaml_str(&format!("{section}: {{ nope: 1 }}\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains(section) && err.contains("unknown field `nope`"), "{section}: {err}");
    }
}

#[test]
fn check_reports_every_problem() {
    let text = r#"
issuer: not a url
signing:
  active: nope
  keys:
    - kid: k1
    - kid: k1
      ephemeral: true
trusted_issuers:
  - issuer: https://idp.example.com
  - issuer: https://idp.example.com
    jwks_url: ftp://x
    jwks_file: /nonexistent/jwks.json
ext_authz:
  output_header: "X-Token"
rules:
  - name: r
    match: { issuers: [https://other.example.com] }
"#;
    let cfg = Config::from_yaml_str(text).unwrap();
    let issues = cfg.check().unwrap_err();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    // Each section's problems in turn, in the order `check` has always listed them.
    assert_eq!(
        paths,
        [
            "issuer",
            "signing.keys[0]",
            "signing.keys[1].kid",
            "signing.active",
            "trusted_issuers[0]",
            "trusted_issuers[1].issuer",
            "trusted_issuers[1]",
            "trusted_issuers[1].jwks_url",
            "trusted_issuers[1].jwks_file",
            "ext_authz.output_header",
            "rules[0].match.issuers[0]",
            "rules[0].grant",
        ]
    );
    let err = ConfigError::Invalid(issues).to_string();
    assert!(err.starts_with("12 problem(s) in the configuration:\n  - issuer: \"not a url\" is not a URL"), "{err}");
}

#[test]
fn relative_files_are_found_beside_the_configuration() {
    let text = MINIMAL
        .replace("      ephemeral: true", "      file: keys/k1.pem")
        .replace("    jwks_url: https://idp.example.com/jwks", "    jwks_file: /etc/idp/jwks.json");
    let cfg = Config::from_file_text(&text, Path::new("/etc/stsgate/config.yaml")).unwrap();
    let files: Vec<&Path> = cfg.files().collect();
    assert_eq!(files, [Path::new("/etc/stsgate/keys/k1.pem"), Path::new("/etc/idp/jwks.json")]);

    // The Redis replay store's URL and TLS files: read at load, watched for a reload.
    let redis = format!(
        "{text}token_endpoint:\n  replay_store:\n    redis: {{ url_file: redis-url, ca_file: tls/ca.pem, \
         client_cert_file: tls/c.pem, client_key_file: /run/k.pem }}\n"
    );
    let cfg = Config::from_file_text(&redis, Path::new("/etc/stsgate/config.yaml")).unwrap();
    let files: Vec<&Path> = cfg.files().skip(2).collect();
    assert_eq!(
        files,
        ["/etc/stsgate/redis-url", "/etc/stsgate/tls/ca.pem", "/etc/stsgate/tls/c.pem", "/run/k.pem"].map(Path::new)
    );
}

#[test]
fn embedded_dev_config_is_valid() {
    let text = DEV_YAML.replace("{http_addr}", "127.0.0.1:8080");
    Config::from_yaml_validated(&text).unwrap();
}
