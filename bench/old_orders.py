"""Reads random old orders (GET /orders/{n}, n from 1 to HIGHEST) on two connections for
SECONDS; prints how many reads were answered 200 and how many otherwise.
   python3 bench/old_orders.py URL HIGHEST SECONDS"""
import http.client
import random
import sys
import threading
import time
from urllib.parse import urlparse

url, highest, seconds = urlparse(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
counts = {"ok": 0, "other": 0}
lock = threading.Lock()


def read(deadline):
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    while time.monotonic() < deadline:
        connection.request("GET", f"/orders/{random.randint(1, highest)}")
        response = connection.getresponse()
        response.read()
        with lock:
            counts["ok" if response.status == 200 else "other"] += 1


deadline = time.monotonic() + seconds
threads = [threading.Thread(target=read, args=(deadline,)) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(f"{counts['ok']} reads answered 200, {counts['other']} otherwise")
