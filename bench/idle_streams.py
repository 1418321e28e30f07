"""Opens N WebSocket streams on a frontend and holds them until killed, reading nothing:
idle subscribers. By default /ws/orders streams of one new user, who places no order; with a
third argument, streams of that path (e.g. /ws/book/Tesla, a stock nobody trades). Prints
"open N" once all are open.

    python3 bench/idle_streams.py http://127.0.0.1:18080 990 [/ws/book/Tesla]
"""
import base64
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request

frontend, count = sys.argv[1], int(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "/ws/orders"
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
time.sleep(3600)
