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
use crate::engine::audit::{Audit, Door as AuditDoor, DoorRefusal};
use crate::engine::clients::ClientAuthError;
use crate::metrics::Metrics;
use crate::rules::Denied;
use crate::trust::introspection::IntrospectionError;
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
    /// An authenticated client using a grant its `grant_types` does not list.
    UnauthorizedClient,
    /// The subject or actor token did not validate.
    BadToken,
    /// A JWT bearer grant's assertion (RFC 7523 §2.1) is invalid, expired,
    /// not addressed to stsgate or used before.
    BadGrant,
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
            (Condition::UnauthorizedClient, Door::Token) => "unauthorized_client",
            // The Check has no clients; were it ever to refuse one, as policy.
            (Condition::UnauthorizedClient, Door::Check) => "access_denied",
            (Condition::BadToken, Door::Check) => "invalid_token",
            // RFC 8693 §2.2.2: an invalid or unacceptable subject or actor token
            // is invalid_request (not RFC 6749's invalid_grant).
            (Condition::BadToken, Door::Token) => "invalid_request",
            // RFC 7523 §3.1; the Check has no grants, only a bearer token.
            (Condition::BadGrant, Door::Check) => "invalid_token",
            (Condition::BadGrant, Door::Token) => "invalid_grant",
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
    /// (u32: keeps `Refusal` small, it travels in `Result`s.)
    pub(crate) retry_after: Option<u32>,
    log: Cow<'static, str>,
    /// What the door knew when it refused, for the audit event (boxed:
    /// refusals travel in `Result`s).
    seen: Option<Box<Seen>>,
}

/// Who asked and for what, as far as the door got: the audit event of a
/// policy refusal (`Refusal::audit`).
#[derive(Debug, Clone, Default)]
struct Seen {
    caller: Option<String>,
    client: Option<String>,
    audience: Option<String>,
    /// The engine wrote the event itself (it knew the subject).
    by_engine: bool,
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
            seen: None,
        }
    }

    /// What the door knew of the request: the Check caller, the token
    /// endpoint client, the audience.
    pub(crate) fn seen(mut self, caller: Option<&str>, client: Option<&str>, audience: Option<&str>) -> Refusal {
        let seen = self.seen.get_or_insert_default();
        seen.caller = caller.map(str::to_owned).or(seen.caller.take());
        seen.client = client.map(str::to_owned).or(seen.client.take());
        seen.audience = audience.map(str::to_owned).or(seen.audience.take());
        self
    }

    /// The refusal of `Engine::exchange` (or `exchange_client_asserted`),
    /// which wrote the audit event of a refusal by the rules itself.
    pub(crate) fn from_decision(e: &ExchangeError, door: Door) -> Refusal {
        let mut r = Refusal::from_exchange(e, door);
        r.seen.get_or_insert_default().by_engine = matches!(e, ExchangeError::Denied(_));
        r
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
            ExchangeError::Introspected(e) => Refusal::introspected(e, Credential::Subject, door),
            ExchangeError::ActorIntrospected(e) => Refusal::introspected(e, Credential::Actor, door),
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

    /// A token its issuer's introspection endpoint did not vouch for (401 /
    /// invalid_request), or could not be asked about (503, fail closed: the
    /// log line says why, the caller only that it may retry).
    pub(crate) fn introspected(e: &IntrospectionError, which: Credential, door: Door) -> Refusal {
        match e {
            IntrospectionError::Token(e) => Refusal::token(e, which, door),
            IntrospectionError::Unavailable { .. } => {
                let description = format!("the {} issuer cannot be asked about it now; try again", which.name(door));
                Refusal::new(Class::Unavailable, Condition::Unavailable, e.label(), description)
                    .logged(Level::WARN, format!("cannot introspect {}: {e}", which.log_name()))
            }
            _ => {
                let description = match (which, door) {
                    (Credential::Subject, Door::Check) => e.to_string(),
                    _ => format!("{}: {e}", which.name(door)),
                };
                Refusal::new(Class::Unauthenticated, Condition::BadToken, e.label(), description)
                    .logged(Level::DEBUG, format!("{} refused by introspection: {e}", which.log_name()))
            }
        }
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
        let (caller, audience) = match c {
            CallerRefused::Unknown { identity, .. } => (identity.as_deref(), None),
            CallerRefused::Audience { identity, audience } => (Some(identity.as_str()), Some(audience.as_str())),
        };
        Refusal::new(Class::Forbidden, Condition::Denied, c.label(), c.to_string())
            .logged(Level::WARN, c.log_line())
            .seen(caller, None, audience)
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
        r.retry_after = Some(u32::try_from(wait_secs).unwrap_or(u32::MAX));
        r
    }

    /// The assertion replay store cannot be reached: the assertion is
    /// refused (fail closed) as a transient condition.
    pub(crate) fn replay_store_down() -> Refusal {
        let label = ClientAuthError::ReplayStoreDown.label();
        let why = "whether the assertion was used before cannot be checked now; retry later";
        Refusal::new(Class::Unavailable, Condition::Unavailable, label, why)
    }

    /// An authenticated client using a grant its `grant_types` does not list
    /// (RFC 6749 §5.2 `unauthorized_client`).
    pub(crate) fn unauthorized_client(client_id: &str, grant_type: &str) -> Refusal {
        let id: String = client_id.chars().take(128).collect();
        let why = format!("client {id:?} may not use grant_type {grant_type}");
        Refusal::new(Class::Forbidden, Condition::UnauthorizedClient, "grant_not_allowed", why).seen(
            None,
            Some(&id),
            None,
        )
    }

    /// A request without client authentication where it is required.
    pub(crate) fn client_required() -> Refusal {
        Refusal::new(Class::Unauthenticated, Condition::Client, "client_required", "client authentication is required")
    }

    /// Client credentials that cannot be read (a malformed Basic header).
    pub(crate) fn client_malformed(why: &'static str) -> Refusal {
        Refusal::new(Class::Unauthenticated, Condition::Client, "bad_client_credentials", why)
    }

    /// Writes the audit event of a policy refusal (`Class::Forbidden`),
    /// unless the engine did; other refusals (bad tokens, bad requests,
    /// stsgate's own trouble) are not audit events.
    pub(crate) fn audit(&self, audit: &Audit, door: Door) {
        let seen = self.seen.as_deref().cloned().unwrap_or_default();
        if self.class != Class::Forbidden || seen.by_engine {
            return;
        }
        audit.refused_at_door(&DoorRefusal {
            door: match door {
                Door::Check => AuditDoor::ExtAuthz,
                Door::Token => AuditDoor::Token,
            },
            caller: seen.caller.as_deref(),
            client: seen.client.as_deref(),
            audience: seen.audience.as_deref(),
            actor: self.actor.as_deref(),
            reason: self.label,
            description: &self.description,
        });
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
    fn grant_and_client_refusals_have_their_rfc_codes() {
        // RFC 7523 §3.1 at the token endpoint; the Check knows only bearer tokens.
        assert_eq!(Condition::BadGrant.code(Door::Token), Some("invalid_grant"));
        assert_eq!(Condition::BadGrant.code(Door::Check), Some("invalid_token"));
        let r = Refusal::unauthorized_client("app", "urn:ietf:params:oauth:grant-type:jwt-bearer");
        assert_eq!((r.class, r.condition.code(Door::Token)), (Class::Forbidden, Some("unauthorized_client")));
        assert_eq!(r.description, "client \"app\" may not use grant_type urn:ietf:params:oauth:grant-type:jwt-bearer");
        let d = Denied::ClientNotInAudience { client: Some("app".into()) };
        assert_eq!(Refusal::denied(&d).condition.code(Door::Token), Some("access_denied"));
    }

    #[test]
    fn introspection_refusals_are_bad_tokens_or_unavailable() {
        let inactive = ExchangeError::Introspected(IntrospectionError::Inactive);
        let inactive = Refusal::from_exchange(&inactive, Door::Check);
        assert_eq!((inactive.class, inactive.label), (Class::Unauthenticated, "inactive"));
        assert_eq!(inactive.description, "token is not active");
        assert_eq!(inactive.condition.code(Door::Check), Some("invalid_token"));
        let actor = IntrospectionError::Token(TokenError::Audience);
        let actor = Refusal::from_exchange(&ExchangeError::ActorIntrospected(actor), Door::Token);
        assert_eq!(actor.condition.code(Door::Token), Some("invalid_request"));
        assert_eq!(actor.description, "actor token: token audience is not accepted");
        let (issuer, reason) = ("https://idp".into(), "HTTP 401: s3cret".into());
        let down = IntrospectionError::Unavailable { issuer, reason, label: "status" };
        let down = Refusal::from_exchange(&ExchangeError::Introspected(down), Door::Token);
        assert_eq!((down.class, down.condition), (Class::Unavailable, Condition::Unavailable));
        assert_eq!(down.condition.code(Door::Token), Some("temporarily_unavailable"));
        // The cause is for the log, not for the caller.
        assert!(!down.description.contains("401") && !down.description.contains("s3cret"), "{}", down.description);
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
