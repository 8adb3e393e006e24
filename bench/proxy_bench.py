"""
Benchmark manualb against nginx, HAProxy, the stock Twisted proxy and the
Python reverse proxies a user might pick instead, over plain HTTP, HTTPS and
HTTP/2, and measure its memory while it streams a large body.

Run it with C{bench/run} (which uses the project's virtualenv).  In one run
it:

 1. starts two fast backends (one nginx, two server blocks) and, in turn,
    each proxy of L{peers.PEERS} in front of them, once per protocol it is
    measured over, and measures requests/s and p50/p99 latency at 50
    clients, 1 MiB bodies' MiB/s at 8, over TLS full handshakes/s and
    whether sessions are resumed, and meanwhile the proxy's CPU time, each
    CPU's and the proxy's peak resident memory;
 2. streams a large body (default 1 GiB) through manualb, downloading from
    nginx and uploading to C{bench/sink_backend.py}, while sampling manualb's
    resident memory.

The results are printed as one table and written to
C{bench/results/latest.json}.  Only 127.0.0.1 is used, on ports the kernel
hands out; every process started is stopped, and every temporary file
removed, at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import publish
from benchproc import (
    BENCH,
    TOOLS,
    BenchError,
    Processes,
    ensureTools,
    pinning,
    runBench,
)
from loads import Usage, checkResponse, indent, resumption, runH2load, runHandshakes, runWrk
from peers import HAPROXY, PEER_PACKAGES, PEERS, PROTOCOLS, Peer, Rig, peerNames, peersVenv
from servers import backendDirectory, makeCertificate, startBackends
from streaming import MiB, runStreaming
from table import BASELINE, NGINX, report

#: Tools without which some rows cannot be measured, and their packages.
REQUIRED_TOOLS = {**TOOLS, "openssl": "openssl"}
OPTIONAL_TOOLS = {"haproxy": HAPROXY, "h2load": "h2load"}
PACKAGES = ["wrk", "nginx-light", "curl", "util-linux", "haproxy", "nghttp2-client", "openssl"]
#: The rows whose failure fails the run: manualb's and the references'.
ESSENTIAL = ("manualb", NGINX, BASELINE)
#: h2load's clients and streams per client for the HTTP/2 rows.
H2_CLIENTS, H2_STREAMS = 10, 10
#: Clients of the 1 MiB bodies' run.
BIG_CLIENTS = 8
#: The most any run may last, in seconds, and the most clients.
MAX_DURATION, MAX_CONNECTIONS = 120, 1000


def parseArgs(argv: list[str]) -> argparse.Namespace:
    """
    Command-line options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--duration", type=int, help="seconds of each requests/s run (10)")
    p.add_argument("-c", "--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--warmup", type=int, help="warm-up seconds before each requests/s run (2)")
    p.add_argument("--size", type=float,
                   help="MiB streamed through manualb each way (1024; 0 skips)")
    p.add_argument("--stream-timeout", type=float, default=120,
                   help="seconds allowed per streaming transfer (120)")
    p.add_argument("--only", choices=peerNames(), action="append", metavar="NAME",
                   help="measure only this proxy (all its rows), or one row such as "
                        "'nginx https' (repeatable); one of: " + ", ".join(peerNames()))
    p.add_argument("--protocol", choices=PROTOCOLS, action="append",
                   help="measure only over this protocol (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="a quick check in about 2 minutes: -d 2 --warmup 0 --size 64 "
                        "unless given")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json",
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    defaults = {"duration": 2, "warmup": 0, "size": 64} if args.quick else {
        "duration": 10, "warmup": 2, "size": 1024}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not (1 <= args.duration <= MAX_DURATION and 1 <= args.connections <= MAX_CONNECTIONS):
        p.error(f"duration must be 1 to {MAX_DURATION}, connections 1 to {MAX_CONNECTIONS}")
    if args.warmup < 0 or args.warmup > MAX_DURATION or args.size < 0:
        p.error("warmup and size must be >= 0")
    args.short = max(1, round(args.duration / 2))
    return args


def selectedRows(args: argparse.Namespace) -> list[tuple[Peer, str]]:
    """
    The rows to measure, (peer, protocol), grouped by protocol.
    """
    rows = []
    for protocol in PROTOCOLS:
        if args.protocol and protocol not in args.protocol:
            continue
        for peer in PEERS:
            if protocol not in peer.protocols:
                continue
            if args.only and peer.name not in args.only and peer.rowName(protocol) not in args.only:
                continue
            rows.append((peer, protocol))
    return rows


def measure(rig: Rig, otherPin: list[str], peer: Peer, protocol: str, args, result: dict) -> None:
    """
    Start C{peer} for C{protocol}, measure it into C{result}, and stop it.
    """
    tls, http2 = protocol != "http", protocol == "h2"
    headers = ("Connection: close",) if peer.closeEach else ()
    process, port = peer.start(rig, tls)
    usage = Usage(process.pid)
    usage.start()
    try:
        seen = sorted({checkResponse(port, tls, http2).strip() for _ in range(4)})
        result["backends_seen"] = seen
        if checkResponse(port, tls, http2, "/1m") != str(MiB):
            raise BenchError("GET /1m did not bring 1 MiB")
        print(f"  {peer.rowName(protocol)}: {args.duration}s ...", flush=True)
        if http2:
            if args.warmup:
                runH2load(otherPin, port, args.warmup, H2_CLIENTS, H2_STREAMS, rig.workdir)
            usage.begin()
            figures, output = runH2load(otherPin, port, args.duration, H2_CLIENTS, H2_STREAMS,
                                        rig.workdir)
        else:
            if args.warmup:
                runWrk(otherPin, port, args.warmup, args.connections, tls=tls, headers=headers)
            usage.begin()
            figures, output = runWrk(otherPin, port, args.duration, args.connections,
                                     tls=tls, headers=headers)
        result["usage"] = usage.end()
        result.update(figures)
        result["output"] = output
        if figures["errors"]:
            print(f"  {peer.rowName(protocol)}: errors:\n{indent(output)}", flush=True)
        failures = result.setdefault("failures", [])
        try:
            if http2:
                big, _ = runH2load(otherPin, port, args.short, BIG_CLIENTS, 1, rig.workdir, "/1m")
            else:
                big, _ = runWrk(otherPin, port, args.short, BIG_CLIENTS, tls=tls, path="/1m",
                                headers=headers)
            result["mib_per_s"] = big["rps"]  # one MiB a response
            result["big"] = big
        except (BenchError, subprocess.TimeoutExpired) as e:
            failures.append(f"1 MiB: {e}")
        if protocol == "https":
            try:
                usage.begin()
                hs = runHandshakes(otherPin, port, args.short, args.connections)
                result["handshake_usage"] = usage.end()
                result["handshakes_per_s"] = hs["rps"]
                result["handshakes"] = hs
            except (BenchError, subprocess.TimeoutExpired) as e:
                failures.append(f"handshakes: {e}")
            result["resumption"] = {v: resumption(port, v, rig.workdir) for v in ("1.2", "1.3")}
        if process.poll() is not None:
            raise BenchError(f"{peer.name} died under load:\n{rig.procs.log(process)}")
    finally:
        usage.stop()
        result["peak_rss_mib"] = usage.peakKiB / 1024
        result["hwm_mib"] = usage.hwmKiB / 1024
        rig.procs.stop(process)


def runRows(rig: Rig, otherPin: list[str], args, missingTools: list[str]) -> list[dict]:
    """
    Measure every selected row in turn; a row that cannot be measured says
    why.
    """
    rows = []
    for peer, protocol in selectedRows(args):
        result = {"row": peer.rowName(protocol), "proxy": peer.name, "protocol": protocol,
                  "note": peer.note}
        rows.append(result)
        why = rig.unavailable.get(peer.needs or "")
        if peer.needs == HAPROXY and "haproxy" in missingTools:
            why = "haproxy is not installed"
        if protocol == "h2" and "h2load" in missingTools:
            why = "h2load is not installed"
        if why:
            print(f"  {result['row']}: {why}", flush=True)
            result["error"] = why
            continue
        try:
            measure(rig, otherPin, peer, protocol, args, result)
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            print(f"  {result['row']}: FAILED: {e}", flush=True)
            result["error"] = str(e)
    return rows


def bench(args: argparse.Namespace, workdir: Path, missingTools: list[str]) -> dict:
    """
    Run the whole benchmark with its files in C{workdir}; return the results.
    """
    started = time.monotonic()
    proxyPin, otherPin, note = pinning()
    print(note, flush=True)
    proxyCpu = int(proxyPin[-1]) if proxyPin else None
    if otherPin:
        # The bench's own sampling and checks stay off the proxy's CPU.
        os.sched_setaffinity(0, {int(otherPin[-1])})
    procs = Processes(workdir)
    # nginx workers run as an unprivileged user when started as root: they
    # must be able to read the files and use the temp directories.
    bigdir = backendDirectory(workdir)
    bigdir.chmod(0o755)
    bigfile = bigdir / "big"
    size = int(args.size * MiB)
    with open(bigfile, "wb") as f:
        f.truncate(size)  # sparse, like `truncate -s`
    (bigdir / "1m").write_bytes(os.urandom(MiB))
    for path in (bigfile, bigdir / "1m"):
        path.chmod(0o644)
    results: dict = {
        "settings": {
            "duration_s": args.duration, "connections": args.connections,
            "warmup_s": args.warmup, "short_s": args.short, "stream_mib": args.size,
            "pinning": note, "proxy_cpu": proxyCpu, "cpus": os.cpu_count(),
            "missing_tools": missingTools,
            # Other work on the machine shows in the figures: say how much.
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
    }
    try:
        rig = Rig(procs, proxyPin, (0, 0), makeCertificate(workdir))
        if any(peer.needs in PEER_PACKAGES for peer, _ in selectedRows(args)):
            rig.peersPython = peersVenv(rig.unavailable)
        results["settings"]["unavailable"] = rig.unavailable
        rig.backendPorts = backendPorts = startBackends(procs, otherPin, bigdir)
        print("load test:", flush=True)
        results["rows"] = runRows(rig, otherPin, args, missingTools)
        if size:
            results["streaming"] = runStreaming(
                procs, proxyPin, otherPin, backendPorts, bigfile, size, args)
    finally:
        procs.stopAll()
        results["elapsed_s"] = time.monotonic() - started
    return results


def failed(results: dict) -> bool:
    """
    Whether a row of manualb or of a reference (nginx, the stock proxy)
    failed or saw errors, or a streaming transfer was incomplete.
    """
    for r in results.get("rows", []):
        if r["proxy"].startswith(ESSENTIAL) and ("error" in r or r.get("errors")):
            return True
    return any("error" in r or not r["complete"] for r in results.get("streaming", {}).values())


def main(argv: list[str]) -> int:
    """
    Run the benchmark, print the report, write the JSON; 0 if all went well.
    """
    args = parseArgs(argv)
    missing: list[str] = []

    def tools() -> None:
        missing.extend(ensureTools(REQUIRED_TOOLS, PACKAGES, OPTIONAL_TOOLS))

    results = runBench("bench", lambda a, w: bench(a, w, missing), args, tools)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
