#!/usr/bin/env python3
"""hostile_client.py - throw malformed and abandoned requests at detour.

    hostile_client.py PORT SECONDS SEED [ABSOLUTE_PREFIX]
    FUZZ_WELLFORMED=1 hostile_client.py ...   (well-formed requests only)

Each connection carries one to three requests built from a seeded random
mix: odd methods and versions, smuggling shapes (Content-Length with
Transfer-Encoding, lists, huge values), folded and control-byte headers,
oversized targets and heads, broken chunked bodies, random byte flips, and
uploads cut off half-way. After every connection the proxy must still
accept a new one; the script exits 1 the moment it does not. With
ABSOLUTE_PREFIX (e.g. http://127.0.0.1:9000) targets are absolute-form, and
CONNECT lines are mixed in, for forward mode. FUZZ_WELLFORMED=1 sends
valid requests only (GET/HEAD/POST/PUT, small and 70 KB bodies), for
driving a hostile upstream.
"""
import os
import random
import socket
import sys
import time

PORT, SECONDS, SEED = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
PREFIX = sys.argv[4] if len(sys.argv) > 4 else ""
WELLFORMED = os.environ.get("FUZZ_WELLFORMED") == "1"
rng = random.Random(SEED)

PATHS = ["/echo", "/bytes?n=100000", "/status/302", "/status/301", "/cookies",
         "/slow?ms=50", "/truncate-chunked", "/truncate", "/reset", "/empty",
         "/bigheaders", "/nolength", "/nocontent", "/notmodified", "/legacy/submit",
         "/old/a%0d%0ab", "/old/\x01\x7f", "/via", "*", "//x", "/a?" + "q" * 3000,
         "/" + "p" * 20000]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
           "CONNECT", "FOO", "G\x00T", "", "get"]
HEADERS = ["Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999999999999999",
           "Content-Length: 3, 4", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
           "Transfer-Encoding: chunked, chunked", "Expect: 100-continue", "Connection: close",
           "Connection: keep-alive, X-Foo", "X-Foo: bar", "Host:", "Host: a b",
           "Host: [::1]:80", "Host: xn--\xff", "Max-Forwards: 0", "Max-Forwards: x",
           "Via: 1.1 detour", "X-K: abc", " folded", "Bad Name: x", "X-Thing: \x01",
           "Cookie: a=b", "Upgrade: websocket", "Proxy-Authorization: x",
           "X-Big: " + "b" * 9000, "Te: trailers", "Range: bytes=0-3"]
CONNECT_TARGETS = ["127.0.0.1:443", "127.0.0.1:", "127.0.0.1:99999", "[::1]:443",
                   "localhost:0", "user@host:443", "http://x/"]


def body(chunked):
    if chunked and rng.random() < 0.8:
        out = b""
        for _ in range(rng.randint(0, 4)):
            n = rng.randint(0, 3000)
            out += b"%x" % n + rng.choice([b"", b";ext=1"]) + b"\r\n" + os.urandom(n) + b"\r\n"
        if rng.random() < 0.7:
            return out + b"0\r\n" + rng.choice([b"", b"X-T: 1\r\n"]) + b"\r\n"
        return out + rng.choice([b"zz\r\n", b"fffffffffffffffffff\r\n", b""])
    return os.urandom(rng.randint(0, 200000) if rng.random() < 0.1 else rng.randint(0, 50))


def wellformed(last):
    method = rng.choice(["GET", "HEAD", "POST", "PUT"])
    payload = b"x" * rng.choice([0, 10, 70000])
    close = "Connection: close\r\n" if last else ""
    head = (f"{method} {PREFIX}/r{rng.randrange(1000)} HTTP/1.1\r\nHost: fuzz.test\r\n{close}"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


def request():
    method = rng.choice(METHODS)
    if method == "CONNECT" and PREFIX:
        target = rng.choice(CONNECT_TARGETS)
    else:
        target = PREFIX + rng.choice(PATHS)
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""])
    lines = ["Host: fuzz.test"] if rng.random() < 0.9 else []
    chunked = False
    for _ in range(rng.randint(0, 6)):
        h = rng.choice(HEADERS)
        chunked |= h.startswith("Transfer-Encoding: chunked")
        lines.append(h)
    head = (f"{method} {target} {version}\r\n" + "".join(h + "\r\n" for h in lines) + "\r\n")
    raw = bytearray(head.encode("latin-1"))
    if rng.random() < 0.05:
        for _ in range(rng.randint(1, 5)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw) + body(chunked)


def alive():
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        return True
    except OSError:
        return False


sent = 0
deadline = time.time() + SECONDS
while time.time() < deadline:
    k = rng.randint(1, 3)
    if WELLFORMED:
        data = b"".join(wellformed(i == k - 1) for i in range(k))
    else:
        data = b"".join(request() for _ in range(k))
    if not WELLFORMED and rng.random() < 0.2:
        data = data[:rng.randint(0, len(data))]  # abandoned half-way
    try:
        c = socket.create_connection(("127.0.0.1", PORT), timeout=6 if WELLFORMED else 2)
        c.sendall(data)
        if rng.random() > 0.1:
            while c.recv(65536):
                pass
        c.close()
    except OSError:
        pass  # resets and timeouts are answers too
    sent += 1
    if not alive():
        print(f"hostile_client: detour stopped accepting after connection {sent} (seed {SEED})")
        sys.exit(1)
print(f"hostile_client: {sent} connections, detour still accepting")
