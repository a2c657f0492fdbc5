#!/usr/bin/env python3
"""hostile_origin.py - an upstream that answers with broken HTTP.

    hostile_origin.py PORT SEED

Every request gets a seeded random pick of malformed or awkward answers:
bad chunk sizes, disagreeing Content-Length values, folded and NUL-bearing
headers, oversized heads, 1xx chains, odd status codes, 101 upgrades,
close-delimited bodies, bare LF, bodies shorter than announced, garbage,
nothing at all; sometimes with flipped bytes, cut off, or followed by a
close. Runs until killed.
"""
import random
import socket
import sys
import threading

PORT, SEED = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(SEED)
lock = threading.Lock()

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/x\r\nContent-Length: 0\r\n\r\n" % PORT,
    b"HTTP/1.1 302 Found\r\nLocation: \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 99 Low\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close " + b"x" * 100000,
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n folded: x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 70000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"Set-Cookie: c%d=v\r\n" % i for i in range(500))
    + b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"garbage\r\n\r\n",
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
]


def serve(conn):
    try:
        conn.settimeout(5)
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(65536)
                if not got:
                    return
                head += got
            with lock:
                answer = rng.choice(ANSWERS)
                flip, cut, close = rng.random() < 0.1, rng.random() < 0.2, rng.random() < 0.3
                if flip and answer:
                    raw = bytearray(answer)
                    for _ in range(3):
                        raw[rng.randrange(len(raw))] = rng.randrange(256)
                    answer = bytes(raw)
                if cut:
                    answer = answer[:rng.randint(0, len(answer))]
            conn.sendall(answer)
            if cut or close:
                return
    except OSError:
        pass
    finally:
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", PORT))
listener.listen(512)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
