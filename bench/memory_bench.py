"""
Measure manualb's memory: idle, across many requests, and holding many idle
keep-alive clients.

Run it with C{bench/memory} (which uses the project's virtualenv).  In one
run it starts the two nginx backends of C{bench/run} and one manualb in
front of them (pinned to CPU 0; the backends, wrk and the clients on CPU 1),
then reports manualb's resident memory (VmRSS):

 1. idle, once it listens, and after its first request;
 2. across C{--requests} requests (default one million) sent by wrk with 50
    keep-alive clients in rounds of C{--round} seconds, sampled after each
    round: the growth from the first round (the warm-up) to the last shows
    whether memory stays flat;
 3. holding C{--idle} idle keep-alive clients (default 10,000), each of which
    has made one request and keeps its connection open: what they cost in
    all and each; then again once they have gone.

Only 127.0.0.1 is used, on ports the kernel hands out; every wrk round is
bounded in time and the rounds in count and total time; every process is
stopped and every file removed at the end.
"""

from __future__ import annotations

import argparse
import compileall
import resource
import selectors
import socket
import sys
import time
from pathlib import Path

from benchlib import publish
from benchproc import ROOT, BenchError, Processes, pinning, runBench
from loads import runWrk
from servers import backendDirectory, startBackends, startManualb
from streaming import rssKiB

BENCH = Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def compileManualb() -> None:
    """
    Compile manualb's modules to bytecode where the benchmark's manualb
    imports them from (the source tree), as an installed manualb has them
    (pip compiles them as it installs).  Without it, where Python writes no
    bytecode (C{PYTHONDONTWRITEBYTECODE}), manualb would compile all of its
    source as it starts, and what the compiler frees stays in its heap:
    about 1.6 MiB more resident, which no installed manualb carries.
    """
    if not compileall.compile_dir(str(ROOT / "manualb"), quiet=1):
        raise BenchError("manualb's modules do not compile")


def settle(pid: int, seconds: float = 1.0) -> int:
    """
    manualb's VmRSS in KiB once it has been left alone for C{seconds}.
    """
    time.sleep(seconds)
    rss = rssKiB(pid)
    if rss is None:
        raise BenchError("manualb exited")
    return rss


def manyRequests(pid: int, port: int, otherPin: list[str], args) -> dict:
    """
    Send about C{args.requests} requests in wrk rounds; sample RSS after each.
    """
    samples = []
    total = 0
    deadline = time.monotonic() + args.limit
    while total < args.requests and time.monotonic() < deadline:
        figures, _ = runWrk(otherPin, port, args.round, 50)
        if figures["errors"]:
            raise BenchError(f"wrk saw errors: {figures['error_detail']}")
        total += figures["requests"]
        samples.append((total, settle(pid, 0.2)))
        print(f"  {total:>9} requests: {samples[-1][1] / 1024:.1f} MiB", flush=True)
    first, last = samples[0][1], samples[-1][1]
    return {
        "requests": total,
        "samples": samples,
        "after_first_round_kib": first,
        "after_last_round_kib": last,
        "growth_kib": last - first,
        "peak_kib": max(rss for _, rss in samples),
    }


def holdIdleClients(pid: int, port: int, count: int, timeout: float) -> tuple[list, int]:
    """
    Open C{count} connections to manualb, make one request on each and read
    its whole answer, keeping every connection open; return the sockets and
    how many answered.  Connections are opened in batches, so that the
    listen queue is never the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    selector = selectors.DefaultSelector()
    sockets = []
    answered = 0
    deadline = time.monotonic() + timeout
    batch = 500
    while len(sockets) < count and time.monotonic() < deadline:
        pending = {}
        for _ in range(min(batch, count - len(sockets))):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(REQUEST)
            s.setblocking(False)
            sockets.append(s)
            pending[s] = b""
            selector.register(s, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                s = key.fileobj
                data = s.recv(65536)
                pending[s] += data
                head, sep, body = pending[s].partition(b"\r\n\r\n")
                if not data or (sep and body.endswith(b"\n")):
                    selector.unregister(s)
                    del pending[s]
                    answered += bool(data)
        for s in pending:
            selector.unregister(s)
    selector.close()
    return sockets, answered


def idleClients(pid: int, port: int, args) -> dict:
    """
    What C{args.idle} idle keep-alive clients cost manualb.
    """
    before = settle(pid)
    sockets, answered = holdIdleClients(pid, port, args.idle, args.limit)
    try:
        held = settle(pid, 2.0)
    finally:
        for s in sockets:
            s.close()
    after = settle(pid, 2.0)
    return {
        "clients": len(sockets),
        "answered": answered,
        "before_kib": before,
        "holding_kib": held,
        "after_close_kib": after,
        "per_client_bytes": round((held - before) * 1024 / max(1, len(sockets))),
    }


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    """
    Run the memory benchmark with its files in C{workdir}.
    """
    proxyPin, otherPin, note = pinning()
    print(note, flush=True)
    procs = Processes(workdir)
    directory = backendDirectory(workdir)
    results: dict = {"settings": {
        "requests": args.requests, "idle_clients": args.idle, "pinning": note,
    }}
    try:
        backendPorts = startBackends(procs, otherPin, directory)
        compileManualb()
        process, port = startManualb(
            procs, proxyPin, "manualb", list(backendPorts), maxConnections=args.idle + 1000
        )
        results["idle_kib"] = settle(process.pid, 2.0)
        runWrk(otherPin, port, 1, 1)
        results["after_first_requests_kib"] = settle(process.pid)
        print(f"idle: {results['idle_kib'] / 1024:.1f} MiB; after a first second "
              f"of requests: {results['after_first_requests_kib'] / 1024:.1f} MiB",
              flush=True)
        print(f"{args.requests} requests:", flush=True)
        results["requests"] = manyRequests(process.pid, port, otherPin, args)
        print(f"{args.idle} idle keep-alive clients:", flush=True)
        results["idle_clients"] = idleClients(process.pid, port, args)
    finally:
        procs.stopAll()
    return results


def report(results: dict) -> str:
    """
    The results as text.
    """
    m = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    r, c = results["requests"], results["idle_clients"]
    return "\n".join([
        f"idle:                          {m(results['idle_kib'])}",
        f"after the first requests:      {m(results['after_first_requests_kib'])}",
        f"after {r['samples'][0][0]:>9} requests:     {m(r['after_first_round_kib'])}",
        f"after {r['requests']:>9} requests:     {m(r['after_last_round_kib'])}"
        f"  (growth {r['growth_kib'] / 1024:+.1f} MiB, peak {m(r['peak_kib'])})",
        f"holding {c['clients']} idle clients:  {m(c['holding_kib'])}"
        f"  ({c['answered']} answered; {c['per_client_bytes']} bytes each)",
        f"after they closed:             {m(c['after_close_kib'])}",
        f"({results['settings']['pinning']})",
    ])


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="requests to send in all (default 1,000,000)")
    parser.add_argument("--round", type=int, default=10,
                        help="seconds of each wrk round (default 10)")
    parser.add_argument("--idle", type=int, default=10_000,
                        help="idle keep-alive clients to hold (default 10,000)")
    parser.add_argument("--limit", type=float, default=300.0,
                        help="seconds at most for the requests, and for opening "
                             "the idle clients (default 300)")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "memory.json")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parseArgs(argv)
    results = runBench("memory", bench, args)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    return 0 if results["idle_clients"]["answered"] == args.idle else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
