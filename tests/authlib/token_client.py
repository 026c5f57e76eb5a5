"""stsgate's token endpoint driven by Authlib, an OAuth client library nobody
here wrote (tests/token_endpoint_authlib.rs runs it).

    python3 token_client.py keygen        prints {"private_pem", "jwk"}: a P-256 client key
    python3 token_client.py < input.json  runs every case, prints {"token_endpoint", "cases"}

The client knows only the RFC 8414 metadata URL and its own credentials (the
input); it discovers the token endpoint and checks the metadata announces
what it is about to use. Each case records what the endpoint answered: the
HTTP status, the RFC 6749 §5.2 error Authlib raised (or the token it
returned). The Rust test asserts on the JSON; this script only exits
non-zero (with a message on stderr) when the metadata does not fit.

Authlib signs client assertions (PrivateKeyJWT) and grant assertions
valid for an hour by default; stsgate accepts assertions whose exp is at most
5 minutes ahead, so this client says `exp` itself.
"""

import json
import sys
import time

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from authlib.integrations.requests_client.oauth2_session import OAuth2ClientAuth
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc7523 import JWTBearerGrant, PrivateKeyJWT
from joserfc.jwk import ECKey

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TIMEOUT = 10


def fail(message):
    print(f"token_client.py: {message}", file=sys.stderr)
    sys.exit(1)


def keygen():
    key = ECKey.generate_key("P-256", private=True)
    jwk = key.as_dict(private=False)
    jwk.update({"kid": "authlib-client", "alg": "ES256", "use": "sig"})
    pem = key.as_pem(private=True)
    print(json.dumps({"private_pem": pem.decode() if isinstance(pem, bytes) else pem, "jwk": jwk}))


class Recorder:
    """The last response a session received (status and challenge), via a requests hook."""

    def __init__(self, session):
        self.status = None
        self.www_authenticate = None
        session.hooks["response"].append(self.record)

    def record(self, resp, *args, **kwargs):
        self.status = resp.status_code
        self.www_authenticate = resp.headers.get("WWW-Authenticate")
        return resp


def outcome(session, call):
    """Runs `call` and says what the endpoint answered."""
    recorder = Recorder(session)
    try:
        token = call()
    # OAuth2Session raises OAuthError, AssertionSession OAuth2Error.
    except (OAuthError, OAuth2Error) as e:
        return {
            "status": recorder.status,
            "error": e.error,
            "description": e.description,
            "www_authenticate": recorder.www_authenticate,
        }
    return {
        "status": recorder.status,
        "error": None,
        "access_token": token.get("access_token"),
        "token_type": token.get("token_type"),
        "expires_in": token.get("expires_in"),
        "scope": token.get("scope"),
        "issued_token_type": token.get("issued_token_type"),
        "refresh_token": token.get("refresh_token"),
    }


def short_lived():
    """Claims that keep an Authlib-signed assertion within stsgate's 5 minutes."""
    return {"exp": int(time.time()) + 120}


def private_key_jwt(endpoint, aud=None, claims=None):
    # A fresh instance per request: Authlib writes the jti into the claims it
    # is given, so a reused instance would reuse its jti.
    return PrivateKeyJWT(aud or endpoint, claims=claims or short_lived(), alg="ES256")


def main():
    given = json.load(sys.stdin)
    meta = requests.get(given["metadata_url"], timeout=TIMEOUT)
    if meta.status_code != 200:
        fail(f"metadata answered {meta.status_code}")
    meta = meta.json()
    endpoint = meta.get("token_endpoint")
    if not endpoint:
        fail(f"the metadata names no token_endpoint: {meta}")
    for grant in (TOKEN_EXCHANGE, JWT_BEARER):
        if grant not in meta.get("grant_types_supported", []):
            fail(f"grant_types_supported lacks {grant}: {meta}")
    for method in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
        if method not in meta.get("token_endpoint_auth_methods_supported", []):
            fail(f"token_endpoint_auth_methods_supported lacks {method}: {meta}")
    if "ES256" not in meta.get("token_endpoint_auth_signing_alg_values_supported", []):
        fail(f"ES256 is not an announced client assertion algorithm: {meta}")

    basic, post, signer = given["basic"], given["post"], given["jwt"]
    key = ECKey.import_key(signer["private_pem"])
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": given["subject_token"],
        "subject_token_type": ACCESS_TOKEN,
        "audience": given["audience"],
        "scope": given["scope"],
    }
    cases = {}

    def with_secret(name, client_id, secret, method, params=exchange):
        s = OAuth2Session(client_id, secret, token_endpoint_auth_method=method)
        cases[name] = outcome(s, lambda: s.fetch_token(endpoint, timeout=TIMEOUT, **params))

    def with_key(name, auth, params):
        s = OAuth2Session(signer["client_id"], key, token_endpoint_auth_method="private_key_jwt")
        s.register_client_auth_method(auth)
        cases[name] = outcome(s, lambda: s.fetch_token(endpoint, timeout=TIMEOUT, **params))

    def grant_assertion(**overrides):
        now = int(time.time())
        args = {
            "key": key,
            "issuer": signer["client_id"],
            "audience": endpoint,
            "subject": given["asserted_subject"],
            "issued_at": now,
            "expires_at": now + 120,
            "claims": {"scope": given["asserted_scope"]},
            "alg": "ES256",
        }
        args.update(overrides)
        return JWTBearerGrant.sign(**args)

    def bearer(assertion):
        return {"grant_type": JWT_BEARER, "assertion": assertion, "audience": given["asserted_audience"]}

    # Token exchange with each client authentication method.
    with_secret("exchange_basic", basic["client_id"], basic["client_secret"], "client_secret_basic")
    with_secret("exchange_post", post["client_id"], post["client_secret"], "client_secret_post")
    with_key("exchange_private_key_jwt", private_key_jwt(endpoint), exchange)

    # The JWT bearer grant with Authlib's AssertionSession: the client signs
    # an assertion about a subject (a rule lets it), authenticating with
    # private_key_jwt. AssertionSession sends no audience parameter: the
    # endpoint's default audience applies.
    s = AssertionSession(
        endpoint,
        issuer=signer["client_id"],
        subject=given["asserted_subject"],
        claims={"scope": given["asserted_scope"]},
        key=key,
        alg="ES256",
        expires_in=120,
        default_timeout=TIMEOUT,
    )
    s.auth = OAuth2ClientAuth(signer["client_id"], key, private_key_jwt(endpoint))
    cases["assertion_session"] = outcome(s, s.refresh_token)
    # The same grant through OAuth2Session, audience named.
    once = grant_assertion()
    with_key("jwt_bearer", private_key_jwt(endpoint), bearer(once))

    # Wrong credentials, each a case of its own.
    with_secret("wrong_secret", basic["client_id"], "not-the-secret", "client_secret_basic")
    with_secret("wrong_method", post["client_id"], post["client_secret"], "client_secret_basic")
    with_secret("unknown_client", "nobody-registered", "whatever", "client_secret_post")
    now = int(time.time())
    fixed = {"exp": now + 120, "jti": "authlib-fixed-jti"}
    with_key("client_assertion_first", private_key_jwt(endpoint, claims=dict(fixed)), exchange)
    with_key("client_assertion_replayed", private_key_jwt(endpoint, claims=dict(fixed)), exchange)
    elsewhere = private_key_jwt(endpoint, aud="https://elsewhere.example/token")
    with_key("client_assertion_wrong_aud", elsewhere, exchange)
    with_key("client_assertion_expired", private_key_jwt(endpoint, claims={"exp": now - 120}), exchange)
    with_key("assertion_replayed", private_key_jwt(endpoint), bearer(once))
    expired = grant_assertion(issued_at=now - 600, expires_at=now - 300)
    with_key("assertion_expired", private_key_jwt(endpoint), bearer(expired))
    misaddressed = grant_assertion(audience="https://elsewhere.example")
    with_key("assertion_wrong_aud", private_key_jwt(endpoint), bearer(misaddressed))
    hour_long = grant_assertion(expires_at=now + 3600)
    with_key("assertion_hour_long", private_key_jwt(endpoint), bearer(hour_long))

    # Other RFC 6749 §5.2 codes an ordinary client provokes, as the basic client.
    def as_basic(name, params):
        with_secret(name, basic["client_id"], basic["client_secret"], "client_secret_basic", params)

    as_basic("wrong_target", {**exchange, "audience": "nowhere"})
    as_basic("wrong_scope", {**exchange, "scope": "admin"})
    as_basic("not_in_audience", {**exchange, "audience": given["bound_audience"]})
    # The basic client may not use the JWT bearer grant (its grant_types).
    as_basic("grant_not_allowed", bearer(once))
    s = OAuth2Session(basic["client_id"], basic["client_secret"], token_endpoint_auth_method="client_secret_basic")
    cases["refresh_token"] = outcome(
        s, lambda: s.refresh_token(endpoint, refresh_token="never-issued", timeout=TIMEOUT)
    )

    print(json.dumps({"token_endpoint": endpoint, "cases": cases}))


if __name__ == "__main__":
    if sys.argv[1:] == ["keygen"]:
        keygen()
    else:
        main()
