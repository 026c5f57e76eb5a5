//! The actor of a request: the party that presents the subject token and
//! wants to act. Each front door finds the raw sources its own way (Check:
//! the mTLS peer Envoy reports and an actor-token header, as the route
//! allows; the token endpoint: the `actor_token` parameter; `explain`: the
//! command line) and the engine makes them one actor here.

use super::{Engine, ExchangeError};
use crate::clock::now_unix;
use crate::rules::{Actor, ActorKind, ActorToken};
use crate::trust::validator::TokenError;

/// The one actor of a request, if any, and the `exp` of the actor token
/// when one proves it: the minted token does not outlive it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResolvedActor {
    pub(crate) actor: Option<Actor>,
    pub(crate) exp: Option<i64>,
}

impl Engine {
    /// Resolves the actor from a peer identity (a SPIFFE ID, as Envoy reports
    /// the mTLS peer) and an actor token. The token is validated like a
    /// subject token (`ExchangeError::ActorToken` when it does not); a peer
    /// and a token naming different parties are refused
    /// (`Denied::ActorConflict`): a request has at most one actor.
    pub(crate) async fn resolve_actor(
        &self,
        peer: Option<&str>,
        token: Option<&str>,
    ) -> Result<ResolvedActor, ExchangeError> {
        let peer =
            peer.map(|p| Actor { kind: ActorKind::Peer, sub: p.to_owned(), iss: None, client_id: None, token: None });
        let (token_actor, exp) = match token {
            Some(token) => {
                let (actor, exp) = self.actor_from_token(token).await?;
                (Some(actor), Some(exp))
            }
            None => (None, None),
        };
        // Only a peer and a token can disagree; who they are is for the log
        // only (the refusal names no one).
        let both = peer.as_ref().zip(token_actor.as_ref()).map(|(p, t)| (p.sub.clone(), t.sub.clone()));
        let actor = Actor::combine(peer, token_actor).inspect_err(|_| {
            let (peer, token_sub) = both.unwrap_or_default();
            tracing::debug!(peer = %peer, token_sub = %token_sub, "actor identities disagree");
        })?;
        Ok(ResolvedActor { actor, exp })
    }

    /// Validates an actor token like a subject token and names its actor;
    /// also returns the token's `exp`. stsgate's own tokens are refused here:
    /// they name the user a chain acts for, never the workload that acts.
    async fn actor_from_token(&self, token: &str) -> Result<(Actor, i64), ExchangeError> {
        // An opaque actor token is introspected like an opaque subject token.
        let now = now_unix();
        let (v, _) = self.validate_until(token, now, self.issuers.key_epoch()).await.map_err(super::Invalid::actor)?;
        if v.is_own() {
            return Err(ExchangeError::ActorToken(TokenError::OwnActorToken));
        }
        let (sub, iss, client_id, exp) = (v.sub.clone(), Some(v.issuer.clone()), v.client_id.clone(), v.exp);
        let actor = Actor { kind: ActorKind::Token, sub, iss, client_id, token: Some(ActorToken(v)) };
        Ok((actor, exp))
    }
}
