"""A tiny OAuth 2.0 authorization server built from Authlib's own RFC 7662
introspection and RFC 7009 revocation endpoints, for tests/introspection_authlib.rs.

Usage: introspection_server.py ISSUER CLIENT_ID CLIENT_SECRET

It serves on 127.0.0.1 (a free port), prints {"port": N} on one line, then:
  POST /introspect  Authlib's IntrospectionEndpoint (client_secret_basic)
  POST /revoke      Authlib's RevocationEndpoint (client_secret_basic)
Tokens (opaque strings) are fixed at start-up; see TOKENS below.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

# Authlib refuses plain-http request URIs unless told this is a test.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, TokenMixin  # noqa: E402
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request  # noqa: E402
from authlib.oauth2.rfc7009 import RevocationEndpoint  # noqa: E402
from authlib.oauth2.rfc7662 import IntrospectionEndpoint  # noqa: E402
from requests.structures import CaseInsensitiveDict  # noqa: E402

ISSUER, CLIENT_ID, CLIENT_SECRET = sys.argv[1:4]
NOW = int(time.time())
LOCK = threading.Lock()


class Client(ClientMixin):
    def __init__(self, client_id, secret):
        self.client_id, self.secret = client_id, secret

    def get_client_id(self):
        return self.client_id

    def check_client_secret(self, client_secret):
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"


class Token(TokenMixin):
    def __init__(self, value, sub, scope, aud, expires_at, token_type="Bearer"):
        self.value, self.sub, self.scope, self.aud = value, sub, scope, aud
        self.expires_at, self.token_type, self.revoked = expires_at, token_type, False

    def check_client(self, client):
        return True

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_at - int(time.time())

    def is_expired(self):
        return self.expires_at < time.time()

    def is_revoked(self):
        return self.revoked


TOKENS = {
    t.value: t
    for t in [
        Token("authlib-live", "alice", "orders.read orders.write", "stsgate", NOW + 600),
        Token("authlib-second", "bob", "orders.read", "stsgate", NOW + 600),
        Token("authlib-expired", "carol", "orders.read", "stsgate", NOW - 600),
        Token("authlib-other-aud", "dave", "orders.read", "another-api", NOW + 600),
    ]
}
CLIENTS = {CLIENT_ID: Client(CLIENT_ID, CLIENT_SECRET)}


class Introspection(IntrospectionEndpoint):
    def query_token(self, token_string, token_type_hint):
        return TOKENS.get(token_string)

    def check_permission(self, token, client, request):
        return True

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": "web-app",
            "token_type": token.token_type,
            "scope": token.get_scope(),
            "sub": token.sub,
            "aud": token.aud,
            "iss": ISSUER,
            "exp": token.expires_at,
            "iat": NOW,
        }


class Revocation(RevocationEndpoint):
    def query_token(self, token_string, token_type_hint):
        return TOKENS.get(token_string)

    def revoke_token(self, token, request):
        with LOCK:
            token.revoked = True


class Request(OAuth2Request):
    def __init__(self, uri, headers, form):
        super().__init__("POST", uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self):
        return self._form


class Server(AuthorizationServer):
    def query_client(self, client_id):
        return CLIENTS.get(client_id)

    def save_token(self, token, request):
        raise NotImplementedError()

    def create_oauth2_request(self, request):
        return request

    def handle_response(self, status, body, headers):
        return status, body, headers

    def send_signal(self, name, *args, **kwargs):
        pass


SERVER = Server()
SERVER.register_endpoint(Introspection)
SERVER.register_endpoint(Revocation)
ENDPOINTS = {"/introspect": "introspection", "/revoke": "revocation"}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        name = ENDPOINTS.get(self.path)
        if name is None:
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = dict(parse_qsl(body, keep_blank_values=True))
        headers = CaseInsensitiveDict(dict(self.headers.items()))
        req = Request(f"http://127.0.0.1{self.path}", headers, form)
        status, payload, resp_headers = SERVER.create_endpoint_response(name, req)
        out = json.dumps(payload).encode() if isinstance(payload, (dict, list)) else (payload or b"")
        self.send_response(status)
        for k, v in resp_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        sys.stderr.write("authlib-server: " + (fmt % args) + "\n")


def main():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": httpd.server_address[1]}), flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
