#!/usr/bin/env python3
"""Failover time of the order group, measured from a client: on a fresh `stocknet up`, N times
kill -9 the leader (which `up` restarts) or SIGSTOP it (SIGCONT once trading resumed), and time
from the fault to the first order answered 200, sending one order after another; then, until
the highest id leads again, the longest pause of orders while it is handed the leadership back.
Every answer
on the way is counted by status; every order is sent under its own Idempotency-Key and a 504 is
retried with it, so none is lost or doubled.

    bench/failover.py [--rounds 20] [--bin target/release/stocknet] [--back-to-back]

With --back-to-back each fault follows the previous recovery at once, without waiting for the
replicas to catch up (a replica resumed from SIGSTOP may still lag) and for the leadership to be
handed back to the highest id. The terms the group went through are reported per fault: one per
leader change is what Raft needs; without --back-to-back each fault costs two, the election and
the handover back.
"""
import argparse, json, os, re, signal, statistics, subprocess, tempfile, time, urllib.request
import urllib.error

FRONTEND, CATALOG, ORDERS = 18080, 18081, [18091, 18092, 18093]


def request(method, path, body=None, key=None, timeout=20):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{FRONTEND}{path}", data=data, method=method)
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("idempotency-key", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def pid_on(port, up):
    """The service listening on `port` (`up` holds each service's socket too)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    pids = [int(pid) for pid in re.findall(r"pid=(\d+)", out) if int(pid) != up]
    return pids[0] if pids else None


def leader():
    status, body = request("GET", "/cluster")
    replicas = body["data"]["replicas"] if status == 200 else []
    leading = [r["id"] for r in replicas if r["up"] and r["leader"] == r["id"]]
    return leading[0] if leading else None


def highest_term():
    status, body = request("GET", "/cluster")
    replicas = body["data"]["replicas"] if status == 200 else []
    return max((r["term"] for r in replicas if r["up"]), default=0)


def caught_up():
    """Every replica knows the leader and has applied as far as the others: the group is back
    in its steady state, ready for the next fault."""
    status, body = request("GET", "/cluster")
    replicas = body["data"]["replicas"] if status == 200 else []
    return bool(replicas) and all(r["ready"] for r in replicas) \
        and len({r["applied"] for r in replicas}) == 1


def wait(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def place(key, statuses):
    """One order under `key`, sent again while its outcome is unknown (504); its last status."""
    while True:
        status, _ = request("POST", "/orders", {"name": "GameStart", "quantity": 1,
                                               "type": "sell"}, key=key)
        statuses[status] = statuses.get(status, 0) + 1
        if status != 504:
            return status


def order_until_ok(tag, statuses):
    """Orders one after another from the fault on; the time the first 200 came back."""
    n = 0
    while True:
        n += 1
        if place(f"{tag}-{n}", statuses) == 200:
            return time.monotonic()


def order_until(tag, statuses, done):
    """Orders one after another until `done()`; the longest time between two answered 200
    (during a handover, how long orders paused for it)."""
    last, longest, n = time.monotonic(), 0.0, 0
    while not done():
        n += 1
        if place(f"{tag}-{n}", statuses) == 200:
            now = time.monotonic()
            longest, last = max(longest, now - last), now
    return longest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bin", default="target/release/stocknet")
    parser.add_argument("--back-to-back", action="store_true")
    args = parser.parse_args()
    data = tempfile.mkdtemp()
    env = dict(os.environ, RUST_LOG="warn")
    # To a file, not a pipe: a pipe nobody reads fills up and stops every service's logging.
    log = open(os.path.join(data, "up.log"), "w")
    up = subprocess.Popen([args.bin, "up", "--data-dir", os.path.join(data, "data"),
                           "--frontend-port", str(FRONTEND), "--catalog-port", str(CATALOG),
                           "--order-ports", ",".join(map(str, ORDERS))], stdout=log,
                          stderr=subprocess.STDOUT, env=env, text=True)
    try:
        wait("stocknet up", lambda: "Ctrl-C stops everything" in open(log.name).read())
        wait("a leader", lambda: leader() is not None)
        results = {}
        for fault in ["kill", "stop"]:
            times, statuses, handbacks = [], {}, []
            first_term = highest_term()
            for round_ in range(args.rounds):
                if not args.back_to_back:
                    wait("every replica ready and caught up", caught_up)
                    # The steady state: the highest id leads, handed the leadership back;
                    # orders go on meanwhile, and the longest pause among them is the
                    # handover's.
                    if leader() != len(ORDERS):
                        deadline = time.monotonic() + 60
                        def handed_back():
                            if time.monotonic() > deadline:
                                raise SystemExit("timed out waiting for the highest id leading")
                            return leader() == len(ORDERS)
                        handbacks.append(order_until(f"back-{fault}-{round_}", statuses,
                                                     handed_back))
                wait("a leader", lambda: leader() is not None)
                status, _ = request("POST", "/orders", {"name": "GameStart", "quantity": 1,
                                                       "type": "sell"})
                assert status == 200, status
                victim = pid_on(ORDERS[leader() - 1], up.pid)
                start = time.monotonic()
                os.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                done = order_until_ok(f"{fault}-{round_}-{start}", statuses)
                times.append(done - start)
                if fault == "stop":
                    os.kill(victim, signal.SIGCONT)
            wait("a leader", lambda: leader() is not None)
            results[fault] = (times, statuses, highest_term() - first_term, handbacks)
        for fault, (times, statuses, terms, handbacks) in results.items():
            print(f"{fault:>4}: {len(times)} faults, until the next order succeeded: median "
                  f"{statistics.median(times):.2f} s, max {max(times):.2f} s; answers on the way "
                  f"{dict(sorted(statuses.items()))}; {terms / len(times):.1f} terms per fault")
            if handbacks:
                print(f"{'':>4}  {len(handbacks)} handovers back to the highest id, the longest "
                      f"pause of orders in each: median {statistics.median(handbacks):.3f} s, "
                      f"max {max(handbacks):.3f} s")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)


if __name__ == "__main__":
    main()
