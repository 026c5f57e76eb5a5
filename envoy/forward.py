#!/usr/bin/env python3
"""A dependency-free app for the three-hop chain (tests/envoy_chain.rs): it
answers every request by calling the next hop over mutual TLS with its own
workload certificate, passing on the `authorization` header it received (the
token its sidecar put there), and answers with the next hop's status, what it
received and what the next hop said, as JSON:

    {"app": NAME, "method": ..., "path": ..., "headers": {...received...},
     "downstream": {"status": 200, "peer": "spiffe://...", "body": <JSON or text>}}

    python3 envoy/forward.py --name web --next https://127.0.0.1:PORT \
        --next-spiffe spiffe://cluster.local/ns/shop/sa/orders \
        --cert web.pem --key web-key.pem --ca ca.pem [--listen 127.0.0.1:0] [--port-file F]

It checks the next hop's certificate against --ca and its URI SAN against
--next-spiffe (as an Istio sidecar checks the server's identity), not its
host name. With --listen port 0 it writes the port it got to --port-file.
"""
import argparse
import http.client
import json
import os
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the app's name, echoed as `app`")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve plain HTTP on (its sidecar calls it)")
    p.add_argument("--port-file", help="write the bound port here (written once, atomically)")
    p.add_argument("--next", required=True, help="https://HOST:PORT of the next hop's sidecar")
    p.add_argument("--next-spiffe", required=True, help="URI SAN the next hop's certificate must carry")
    p.add_argument("--cert", required=True, help="this workload's certificate (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--ca", required=True, help="CA that issued the next hop's certificate (PEM)")
    p.add_argument("--timeout", type=float, default=10.0)
    return p.parse_args()


ARGS = parse_args()
NEXT = urllib.parse.urlsplit(ARGS.next)
if NEXT.scheme != "https" or not NEXT.hostname or not NEXT.port:
    sys.exit(f"forward: --next must be https://HOST:PORT, got {ARGS.next}")

TLS = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ARGS.ca)
TLS.check_hostname = False  # the URI SAN is checked instead, below
TLS.verify_mode = ssl.CERT_REQUIRED
TLS.load_cert_chain(ARGS.cert, ARGS.key)


def call_next(method, path, authorization):
    """(status, peer SPIFFE ID, body) of the next hop; raises on a TLS or identity failure."""
    conn = http.client.HTTPSConnection(NEXT.hostname, NEXT.port, context=TLS, timeout=ARGS.timeout)
    try:
        conn.connect()
        sans = conn.sock.getpeercert().get("subjectAltName", ())
        peer = next((v for k, v in sans if k == "URI"), None)
        if peer != ARGS.next_spiffe:
            raise ssl.SSLError(f"next hop is {peer!r}, expected {ARGS.next_spiffe!r}")
        headers = {"authorization": authorization} if authorization is not None else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return resp.status, peer, body
    finally:
        conn.close()


class Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        received = {k.lower(): ", ".join(self.headers.get_all(k)) for k in dict.fromkeys(self.headers.keys())}
        try:
            status, peer, body = call_next(self.command, self.path, self.headers.get("authorization"))
            downstream = {"status": status, "peer": peer, "body": body}
        except (OSError, http.client.HTTPException) as e:
            status, downstream = 502, {"status": None, "error": f"{type(e).__name__}: {e}"}
        answer = {"app": ARGS.name, "method": self.command, "path": self.path, "headers": received, "downstream": downstream}
        out = json.dumps(answer, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{ARGS.name}: {fmt % args}\n")


def main():
    host, _, port = ARGS.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Forward)
    bound = server.server_address[1]
    if ARGS.port_file:
        tmp = ARGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, ARGS.port_file)
    print(f"{ARGS.name}: listening on http://{host}:{bound}, next hop {ARGS.next} ({ARGS.next_spiffe})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
