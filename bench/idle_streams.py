"""Opens N WebSocket streams on a frontend and holds them until killed, reading nothing:
idle subscribers. By default /ws/orders streams of one new user, who places no order; with a
third argument, streams of that path (e.g. /ws/book/Tesla, a stock nobody trades). With
--read last, the streams read (and drop) everything they are sent instead: subscribers that
keep up. Prints "open N" once all are open.

    python3 bench/idle_streams.py http://127.0.0.1:18080 990 [/ws/book/Tesla] [--read]
"""
import base64
import json
import os
import selectors
import socket
import sys
import time
import urllib.parse
import urllib.request

reading = sys.argv[-1] == "--read"
arguments = [a for a in sys.argv[1:] if a != "--read"]
frontend, count = arguments[0], int(arguments[1])
path = arguments[2] if len(arguments) > 2 else "/ws/orders"
authorization = ""
if path == "/ws/orders":
    created = urllib.request.Request(f"{frontend}/users", data=b"{}", method="POST",
                                     headers={"content-type": "application/json"})
    key = json.load(urllib.request.urlopen(created, timeout=10))["data"]["api_key"]
    authorization = f"Authorization: Bearer {key}\r\n"
address = urllib.parse.urlsplit(frontend)
streams = []
for _ in range(count):
    stream = socket.create_connection((address.hostname, address.port), timeout=10)
    nonce = base64.b64encode(os.urandom(16)).decode()
    stream.sendall((f"GET {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                    f"{authorization}\r\n").encode())
    status = stream.recv(4096).split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        sys.exit(f"a stream was refused: {status.decode(errors='replace')}")
    streams.append(stream)
print("open", len(streams), flush=True)
if not reading:
    time.sleep(3600)
    sys.exit(0)
ready = selectors.DefaultSelector()
for stream in streams:
    stream.setblocking(False)
    ready.register(stream, selectors.EVENT_READ)
while ready.get_map():
    for key, _ in ready.select():
        try:
            if not key.fileobj.recv(1 << 16):
                ready.unregister(key.fileobj)
        except BlockingIOError:
            pass
