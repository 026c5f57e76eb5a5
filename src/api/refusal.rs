//! Every way a front door says no, mapped once. An engine error
//! (`ExchangeError`) or a request a door cannot read becomes one `Refusal`:
//! its class (the metric's outcome, and the status family), its condition
//! (which each door names with its own error code, `Condition::code`), a
//! description the caller may read, a bounded metric label and a log line.
//! `Refusal::record` counts and logs it, once; the doors only render it: the
//! ext_authz Check as a denied `CheckResponse` (401 + `WWW-Authenticate`,
//! 400, 403, 503), the token endpoint as RFC 6749 §5.2 JSON.
//!
//! Descriptions name the check that failed, never token contents; log lines
//! may say more (an issuer, an error chain), still never token contents.

use std::borrow::Cow;

use tracing::{Level, debug, error, info, warn};

use crate::api::callers::CallerRefused;
use crate::engine::ExchangeError;
use crate::engine::clients::ClientAuthError;
use crate::metrics::Metrics;
use crate::rules::Denied;
use crate::trust::validator::TokenError;

/// The front door a refusal is answered at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// The ext_authz Check: the subject token is the request's bearer token.
    Check,
    /// The RFC 8693 token endpoint: tokens are form parameters.
    Token,
}

impl Door {
    /// The door's name in logs, as in `stsgate_request_duration_seconds{api}`.
    pub(crate) fn api(self) -> &'static str {
        match self {
            Door::Check => "ext_authz",
            Door::Token => "token",
        }
    }
}

/// Whose fault a refusal is, broadly: the `outcome` of
/// `stsgate_decisions_total`, and the status family at the Check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// No usable credential, or a token that did not validate.
    Unauthenticated,
    /// A request stsgate cannot read.
    InvalidRequest,
    /// The rules (or the route) refuse it.
    Forbidden,
    /// Not the caller's fault, and it may pass: an issuer's keys cannot be had.
    Unavailable,
    /// Not the caller's fault: stsgate failed (minting).
    Internal,
}

/// What exactly is refused, whichever door refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    /// The request carries no credential at all.
    NoCredential,
    /// The request cannot be read: a malformed credential header, a missing
    /// or repeated parameter, an unknown token type.
    Malformed,
    /// An HTTP method the door does not serve.
    Method,
    /// A request body over the door's limit.
    TooLarge,
    /// A grant type stsgate does not serve.
    UnsupportedGrant,
    /// The subject or actor token did not validate.
    BadToken,
    /// No audience, several, or none a rule allows.
    Target,
    /// None of the requested scopes can be granted.
    Scope,
    /// A policy refusal: `may_act`, chain depth, conflicting actors, a
    /// Check caller that is not authenticated or not allowed, ...
    Denied,
    /// Nothing can be issued now; try again.
    Unavailable,
    /// Client authentication at the token endpoint failed (RFC 6749 §5.2).
    Client,
    /// Too many failed client authentications for this client of late
    /// (429 with Retry-After, RFC 6585 §4; the code stays invalid_client).
    ClientRateLimited,
}

impl Condition {
    /// The error code `door` answers with: RFC 6750 §3.1 at the Check, RFC
    /// 6749 §5.2 and RFC 8693 §2.2.2 at the token endpoint. `None` only for
    /// a Check without any credential: its challenge has no code (RFC 6750 §3).
    pub(crate) fn code(self, door: Door) -> Option<&'static str> {
        Some(match (self, door) {
            (Condition::NoCredential, Door::Check) => return None,
            (Condition::NoCredential | Condition::Malformed | Condition::Method | Condition::TooLarge, _) => {
                "invalid_request"
            }
            (Condition::UnsupportedGrant, _) => "unsupported_grant_type",
            (Condition::BadToken, Door::Check) => "invalid_token",
            // RFC 8693 §2.2.2: an invalid or unacceptable subject or actor token
            // is invalid_request (not RFC 6749's invalid_grant).
            (Condition::BadToken, Door::Token) => "invalid_request",
            (Condition::Target, _) => "invalid_target",
            (Condition::Scope, _) => "invalid_scope",
            (Condition::Denied, _) => "access_denied",
            (Condition::Unavailable, _) => "temporarily_unavailable",
            (Condition::Client | Condition::ClientRateLimited, _) => "invalid_client",
        })
    }
}

/// Which token a token refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    Subject,
    Actor,
}

impl Credential {
    /// The token's name in descriptions: at the Check the subject token is
    /// the request's bearer token, "the token".
    fn name(self, door: Door) -> &'static str {
        match (self, door) {
            (Credential::Subject, Door::Check) => "token",
            (Credential::Subject, Door::Token) => "subject token",
            (Credential::Actor, _) => "actor token",
        }
    }

    /// The token's name in log lines.
    fn log_name(self) -> &'static str {
        match self {
            Credential::Subject => "subject token",
            Credential::Actor => "actor token",
        }
    }
}

/// One refusal, as every front door answers and records it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) class: Class,
    pub(crate) condition: Condition,
    /// Safe to show the caller.
    pub(crate) description: Cow<'static, str>,
    /// `stsgate_decisions_total{reason}`, from a bounded set
    /// (`TokenError::label`, `Denied::label`, the doors' own).
    pub(crate) label: &'static str,
    /// How loud `record` logs it: warnings for stsgate's own trouble, debug
    /// for the caller's.
    pub(crate) level: Level,
    /// The actor refused, once known: access logs show who, not only why.
    pub(crate) actor: Option<String>,
    /// Seconds a rate-limited client waits (`Retry-After`).
    pub(crate) retry_after: Option<u64>,
    log: Cow<'static, str>,
}

impl Refusal {
    /// A refusal logged at debug level with its description.
    pub(crate) fn new(
        class: Class,
        condition: Condition,
        label: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Refusal {
        let description = description.into();
        Refusal {
            class,
            condition,
            log: description.clone(),
            description,
            label,
            level: Level::DEBUG,
            actor: None,
            retry_after: None,
        }
    }

    /// A request that cannot be read.
    pub(crate) fn bad_request(label: &'static str, description: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(Class::InvalidRequest, Condition::Malformed, label, description)
    }

    /// Logs `line` at `level` instead of the description.
    pub(crate) fn logged(self, level: Level, line: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { level, log: line.into(), ..self }
    }

    /// Names the actor refused.
    pub(crate) fn by(self, actor: Option<&crate::rules::Actor>) -> Refusal {
        Refusal { actor: actor.map(|a| a.sub.clone()), ..self }
    }

    /// The refusal of an exchange the engine would not make.
    pub(crate) fn from_exchange(e: &ExchangeError, door: Door) -> Refusal {
        match e {
            ExchangeError::Token(e) => Refusal::token(e, Credential::Subject, door),
            ExchangeError::ActorToken(e) => Refusal::token(e, Credential::Actor, door),
            ExchangeError::Denied(d) => Refusal::denied(d),
            ExchangeError::Mint(e) => {
                Refusal::new(Class::Internal, Condition::Unavailable, "mint_failed", "the token could not be issued")
                    .logged(Level::WARN, format!("minting failed: {e}"))
            }
        }
    }

    /// A subject or actor token that did not validate, or whose issuer's
    /// keys cannot be had (then not the token's fault).
    pub(crate) fn token(e: &TokenError, which: Credential, door: Door) -> Refusal {
        if e.is_unavailable() {
            let description = format!("the {} issuer's keys are not available; try again", which.name(door));
            return Refusal::new(Class::Unavailable, Condition::Unavailable, e.label(), description)
                .logged(Level::WARN, format!("cannot validate {}: {e}", which.log_name()));
        }
        // At the Check the challenge already says the bearer token is meant.
        let description = match (which, door) {
            (Credential::Subject, Door::Check) => e.to_string(),
            _ => format!("{}: {e}", which.name(door)),
        };
        Refusal::new(Class::Unauthenticated, Condition::BadToken, e.label(), description)
            .logged(Level::DEBUG, format!("{} refused: {e}", which.log_name()))
    }

    /// A refusal by the rules: no target or scope is the request's problem,
    /// anything else is policy.
    pub(crate) fn denied(d: &Denied) -> Refusal {
        let condition = match d {
            Denied::NoRule { .. } | Denied::NoAudience => Condition::Target,
            Denied::NoScope { .. } => Condition::Scope,
            _ => Condition::Denied,
        };
        Refusal::new(Class::Forbidden, condition, d.label(), d.to_string())
            .logged(Level::DEBUG, format!("exchange refused: {d}"))
    }

    /// A Check caller refused by `ext_authz.callers`: not identified, not
    /// listed, or asking for an audience its entry does not list. Not the
    /// downstream's doing but the calling Envoy's (or an impostor's), so it
    /// is logged as a warning.
    pub(crate) fn caller(c: &CallerRefused) -> Refusal {
        Refusal::new(Class::Forbidden, Condition::Denied, c.label(), c.to_string()).logged(Level::WARN, c.log_line())
    }

    /// A token endpoint client that did not authenticate: unknown, wrong
    /// secret, or a method it is not configured for. The description never
    /// says which, nor echoes what was sent.
    pub(crate) fn client(e: ClientAuthError, client_id: Option<&str>) -> Refusal {
        let line = match client_id {
            Some(id) => format!("client authentication failed for {id:?}: {e}"),
            None => format!("client authentication failed: {e}"),
        };
        Refusal::new(Class::Unauthenticated, Condition::Client, e.label(), "client authentication failed")
            .logged(Level::DEBUG, line)
    }

    /// A client whose failed authentications exceeded its rate: refused
    /// before its credentials are checked, for `wait_secs`.
    pub(crate) fn client_rate_limited(client_id: &str, wait_secs: u64) -> Refusal {
        let why = format!("too many failed client authentications; retry after {wait_secs} s");
        let mut r = Refusal::new(Class::Unauthenticated, Condition::ClientRateLimited, "client_rate_limited", why)
            .logged(Level::INFO, format!("client {client_id:?} is rate limited after failed authentications"));
        r.retry_after = Some(wait_secs);
        r
    }

    /// A request without client authentication where it is required.
    pub(crate) fn client_required() -> Refusal {
        Refusal::new(Class::Unauthenticated, Condition::Client, "client_required", "client authentication is required")
    }

    /// Client credentials that cannot be read (a malformed Basic header).
    pub(crate) fn client_malformed(why: &'static str) -> Refusal {
        Refusal::new(Class::Unauthenticated, Condition::Client, "bad_client_credentials", why)
    }

    /// Counts the refusal and logs it: the one place either happens.
    pub(crate) fn record(&self, metrics: &Metrics, door: Door) {
        match self.class {
            Class::Unauthenticated => metrics.unauthenticated(self.label),
            Class::InvalidRequest => metrics.bad_request(self.label),
            Class::Forbidden => metrics.deny(self.label),
            Class::Unavailable | Class::Internal => metrics.unavailable(self.label),
        }
        if matches!(self.condition, Condition::Client | Condition::ClientRateLimited) {
            metrics.client_auth_failure(self.label);
        }
        let (api, actor, log) = (door.api(), self.actor.as_deref(), &self.log);
        if self.level == Level::ERROR {
            error!(api, actor, reason = self.label, "{log}");
        } else if self.level == Level::WARN {
            warn!(api, actor, reason = self.label, "{log}");
        } else if self.level == Level::INFO {
            info!(api, actor, reason = self.label, "{log}");
        } else {
            debug!(api, actor, reason = self.label, "{log}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doors_name_token_refusals_their_own_way() {
        let check = Refusal::from_exchange(&ExchangeError::Token(TokenError::Expired), Door::Check);
        let token = Refusal::from_exchange(&ExchangeError::Token(TokenError::Expired), Door::Token);
        assert_eq!((check.class, check.label), (Class::Unauthenticated, "expired"));
        assert_eq!(check.condition.code(Door::Check), Some("invalid_token"));
        assert_eq!(check.description, "token has expired");
        assert_eq!(token.condition.code(Door::Token), Some("invalid_request"));
        assert_eq!(token.description, "subject token: token has expired");
        let actor = Refusal::from_exchange(&ExchangeError::ActorToken(TokenError::Expired), Door::Check);
        assert_eq!(actor.description, "actor token: token has expired");
        let actor = Refusal::from_exchange(&ExchangeError::ActorToken(TokenError::Expired), Door::Token);
        assert_eq!((actor.class, actor.condition), (Class::Unauthenticated, Condition::BadToken));
        assert_eq!(actor.condition.code(Door::Token), Some("invalid_request"));
        assert_eq!(actor.description, "actor token: token has expired");
        let keys = Refusal::token(&TokenError::KeysUnavailable("down".into()), Credential::Subject, Door::Token);
        assert_eq!(keys.class, Class::Unavailable);
        assert_eq!(keys.condition.code(Door::Token), Some("temporarily_unavailable"));
        assert_eq!(keys.description, "the subject token issuer's keys are not available; try again");
    }

    #[test]
    fn rule_refusals_keep_their_oauth_codes() {
        let code = |d: Denied| Refusal::denied(&d).condition.code(Door::Token).unwrap();
        assert_eq!(code(Denied::NoRule { audience: "x".into() }), "invalid_target");
        assert_eq!(code(Denied::NoAudience), "invalid_target");
        assert_eq!(code(Denied::NoScope { rule: "r".into() }), "invalid_scope");
        assert_eq!(code(Denied::MayAct), "access_denied");
        assert_eq!(Condition::NoCredential.code(Door::Check), None);
        // Presenter binding is policy: 403 access_denied, described, labelled.
        let d =
            Denied::PresenterMismatch { issued_to: vec!["orders".into()], actor: Some("spiffe://x/billing".into()) };
        let r = Refusal::denied(&d);
        assert_eq!((r.class, r.condition, r.label), (Class::Forbidden, Condition::Denied, "presenter_mismatch"));
        assert_eq!(r.condition.code(Door::Check), Some("access_denied"));
        assert_eq!(
            r.description,
            "the token was issued to \"orders\"; actor \"spiffe://x/billing\" is not a workload of it"
        );
    }
}
