#!/usr/bin/env python3
"""A stand-in for the shipping partner's HTTP API, on loopback (standard library only).

    python3 examples/shop/fake_partner.py [--port 8010] [--delay-ms 20]

GET /quote?sku=...&zone=... answers a JSON quote after `--delay-ms`; GET /healthz answers ok.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class PartnerHandler(BaseHTTPRequestHandler):
    server_version = "FakePartner/1.0"
    delay_s = 0.02

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._reply(200, {"ok": True})
        elif url.path == "/quote":
            query = parse_qs(url.query)
            sku = query.get("sku", [""])[0]
            zone = query.get("zone", ["EU"])[0]
            time.sleep(self.delay_s)
            cents = 490 + zlib.crc32(f"{sku}/{zone}".encode()) % 1500
            self._reply(200, {"sku": sku, "zone": zone, "price": f"{cents / 100:.2f}", "currency": "EUR", "days": 2})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    PartnerHandler.delay_s = args.delay_ms / 1000
    server = ThreadingHTTPServer(("127.0.0.1", args.port), PartnerHandler)
    print(f"fake partner listening on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
