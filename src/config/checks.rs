//! What every section's `check()` shares: the list of problems it adds to, and
//! checks of values that appear in more than one section.

use super::ConfigIssue;

/// The problems found so far, each located by its key path.
#[derive(Debug, Default)]
pub(super) struct Issues(Vec<ConfigIssue>);

impl Issues {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue { path: path.into(), message: message.into() });
    }

    pub(super) fn into_result(self) -> Result<(), Vec<ConfigIssue>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// An absolute http(s) URL with a host and no query or fragment.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" | "http" => {}
        other => return Err(format!("{url:?} has scheme {other:?}; use https (or http for local testing)")),
    }
    if parsed.host_str().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.fragment().is_some() || parsed.query().is_some() {
        return Err(format!("{url:?} must not carry a query or fragment"));
    }
    Ok(())
}

/// A request header ext_authz may set or remove: a valid, lower-case name
/// that is not a pseudo-header or Host.
pub(super) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(format!("{name:?} is a pseudo-header or Host, which Envoy will not let ext_authz change"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{name:?} must be lower-case (Envoy lower-cases header names)"));
    }
    Ok(())
}
