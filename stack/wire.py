"""The few protocol clients the health checks speak: HTTP, MongoDB OP_MSG over tiny BSON, Redis RESP."""

from __future__ import annotations

import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from .settings import HOST

__all__ = ["bson_decode", "bson_encode", "http", "mongo_command", "redis_command"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback


def http(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of one HTTP request (an error status is returned, not raised)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- tiny BSON + MongoDB OP_MSG, enough for {ping: 1} / {hello: 1}

def bson_encode(doc: Mapping[str, bool | int | str]) -> bytes:
    """A BSON document of booleans, 32-bit integers and strings."""
    out = b""
    for k, v in doc.items():
        key = k.encode() + b"\0"
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, str):
            s = v.encode() + b"\0"
            out += b"\x02" + key + struct.pack("<i", len(s)) + s
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(out) + 5) + out + b"\0"


def bson_decode(buf: bytes, pos: int = 0) -> dict[str, Any]:
    """The BSON document at `buf[pos:]` (the types a hello/ping reply uses)."""
    (size,) = struct.unpack_from("<i", buf, pos)
    end, pos, doc = pos + size - 1, pos + 4, {}
    v: Any
    while pos < end:
        t = buf[pos]
        pos += 1
        z = buf.index(b"\0", pos)
        key, pos = buf[pos:z].decode(), z + 1
        if t == 0x01:
            (v,) = struct.unpack_from("<d", buf, pos); pos += 8
        elif t in (0x02, 0x0D, 0x0E):
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 4:pos + 3 + n].decode("utf-8", "replace"); pos += 4 + n
        elif t in (0x03, 0x04):
            v = bson_decode(buf, pos); pos += struct.unpack_from("<i", buf, pos)[0]
            if t == 0x04:
                v = list(v.values())
        elif t == 0x05:
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 5:pos + 5 + n]; pos += 5 + n
        elif t == 0x07:
            v = buf[pos:pos + 12].hex(); pos += 12
        elif t == 0x08:
            v = buf[pos] == 1; pos += 1
        elif t in (0x09, 0x11, 0x12):
            (v,) = struct.unpack_from("<q", buf, pos); pos += 8
        elif t in (0x0A, 0xFF, 0x7F):
            v = None
        elif t == 0x10:
            (v,) = struct.unpack_from("<i", buf, pos); pos += 4
        elif t == 0x13:
            v = buf[pos:pos + 16]; pos += 16
        else:
            raise ValueError(f"unsupported BSON type 0x{t:02x}")
        doc[key] = v
    return doc


def mongo_command(port: int, cmd: Mapping[str, bool | int | str], timeout: float = 2.0) -> dict[str, Any]:
    """The reply to one MongoDB command sent as OP_MSG to 127.0.0.1:port."""
    body = struct.pack("<I", 0) + b"\x00" + bson_encode(cmd)  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(body), 1, 0, 2013)  # OP_MSG
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(header + body)
        data = b""
        while len(data) < 4 or len(data) < struct.unpack_from("<i", data)[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
    if struct.unpack_from("<i", data, 12)[0] != 2013 or data[20] != 0:
        raise ValueError("unexpected MongoDB reply")
    return bson_decode(data, 21)


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """The first reply line(s) of one Redis command sent to 127.0.0.1:port."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data
