#!/usr/bin/env python3
"""What one durable append costs on this disk: append 100 bytes + fdatasync, as the order log
and the catalog journal do, alone and with WRITERS processes doing the same at once (a commit
round fsyncs on the leader and both followers together, all on one disk when run locally);
then the same writes into a file made long enough first (`ftruncate`), as a preallocated log
would write them: its size unchanged, the fdatasync need not write the inode.

    bench/fsync.py [WRITERS, default 3] [DIR, default: a temporary directory under target/]
"""
import os
import statistics
import sys
import tempfile
from multiprocessing import Pool
from time import perf_counter

APPENDS = 3000


PREALLOCATED = 64 << 20


def appender(path, preallocated=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if preallocated:
        os.ftruncate(fd, PREALLOCATED)
        os.fsync(fd)
    record = b"x" * 99 + b"\n"
    times = []
    for i in range(APPENDS):
        started = perf_counter()
        os.pwrite(fd, record, i * len(record))
        os.fdatasync(fd)
        times.append(perf_counter() - started)
    os.close(fd)
    times.sort()
    return times


def preallocated(path):
    return appender(path, preallocated=True)


def report(label, times):
    us = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1e6
    slow = sum(t > 0.004 for t in times) * 100 / len(times)
    print(f"{label}: p50 {us(0.5):.0f} us, p99 {us(0.99):.0f} us, "
          f"p99.9 {us(0.999):.0f} us, over 4 ms {slow:.2f}%")


def main():
    writers = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    base = sys.argv[2] if len(sys.argv) > 2 else "target"
    os.makedirs(base, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as d:
        for label, write in (("appended", appender), ("preallocated", preallocated)):
            report(f"{label}, 1 writer", write(os.path.join(d, "solo")))
            with Pool(writers) as pool:
                runs = pool.map(write, [os.path.join(d, f"w{i}") for i in range(writers)])
            report(f"{label}, {writers} writers at once", sorted(t for run in runs for t in run))
            print(f"(median of the per-writer medians: "
                  f"{statistics.median(run[len(run) // 2] for run in runs) * 1e6:.0f} us)")


if __name__ == "__main__":
    main()
