"""
Slow clients against manualb and nginx, side by side: a slowloris attack,
request heads trickled a byte every few seconds (as slowhttptest's -H mode
sends them).

Run it with C{bench/slow}.  Both servers are given the same
C{client_header_timeout}; the report shows, over time, how many of the
attacking connections each still holds open, and when the last one was
closed.  Only 127.0.0.1 is used; every load loop is
bounded in connections and time; every process started is stopped at the
end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from benchlib import freePort, publish
from benchproc import Processes, runBench, writeFile
from servers import nginxMain, startNginx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\n"
TRICKLE = b"X-Slow: " + b"a" * 200 + b"\r\n"


def manualbConfig(port: int, backend: int, headerTimeout: int) -> str:
    return f"""\
[manualb]
listen = tcp:{port}:interface=127.0.0.1
access_log = off

[gatekeeper]
client_header_timeout = {headerTimeout}s
max_connections = 4096

[upstream backends]
servers = 127.0.0.1:{backend}

[route default]
path = /
upstream = backends
"""


def nginxConfig(workdir: Path, port: int, headerTimeout: int) -> str:
    return nginxMain(workdir, "nginx") + f"""\
    client_header_timeout {headerTimeout}s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def startManualb(procs: Processes, name: str, config: str, port: int):
    conf = writeFile(procs.workdir / f"{name}.ini", config)
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "manualb", "--config", str(conf),
    ]
    return procs.start(name, argv, port)


async def _slowClient(port: int, interval: float, limit: float, start: float) -> float | None:
    """
    Send a request head a byte every C{interval} seconds, never finishing
    it; return when the server closed the connection (seconds after
    C{start}), or L{None} if it was still open after C{limit} seconds.
    """
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0.0
    try:
        writer.write(HEAD)
        await writer.drain()
        position = 0
        while time.monotonic() - start < limit:
            try:
                data = await asyncio.wait_for(reader.read(65536), interval)
            except asyncio.TimeoutError:
                writer.write(TRICKLE[position % len(TRICKLE) : position % len(TRICKLE) + 1])
                position += 1
                try:
                    await writer.drain()
                except OSError:
                    return time.monotonic() - start
                continue
            if not data:
                return time.monotonic() - start
        return None
    except OSError:
        return time.monotonic() - start
    finally:
        writer.close()


async def _attack(port: int, connections: int, interval: float, limit: float) -> list[float | None]:
    start = time.monotonic()
    return await asyncio.gather(
        *(_slowClient(port, interval, limit, start) for _ in range(connections))
    )


def slowloris(port: int, connections: int, interval: float, limit: float) -> dict:
    closes = asyncio.run(_attack(port, connections, interval, limit))
    closed = sorted(t for t in closes if t is not None)
    marks = [5, 10, 15, 20, 30, 45, 60]
    return {
        "connections": connections,
        "open_at": {
            str(mark): sum(1 for t in closes if t is None or t > mark)
            for mark in marks
            if mark <= limit
        },
        "still_open": sum(1 for t in closes if t is None),
        "last_closed_s": round(closed[-1], 1) if closed else None,
    }


def report(results: dict) -> str:
    rows = []
    for name, r in results["slowloris"].items():
        marks = "  ".join(f"{m}s:{n:>4}" for m, n in r["open_at"].items())
        rows.append(
            f"{name:<8} open {marks}  still open at the end: {r['still_open']:>4}"
            f"  last closed at {r['last_closed_s']} s"
        )
    return (
        f"slowloris: {results['connections']} connections, a byte every "
        f"{results['interval']} s, client_header_timeout {results['header_timeout']} s\n"
        + "\n".join(rows)
    )


def bench(args, workdir: Path) -> dict:
    procs = Processes(workdir)
    try:
        results = {
            "connections": args.connections,
            "interval": args.interval,
            "header_timeout": args.header_timeout,
            "slowloris": {},
        }
        backend = freePort()
        port = freePort()
        startManualb(procs, "manualb", manualbConfig(port, backend, args.header_timeout), port)
        results["slowloris"]["manualb"] = slowloris(
            port, args.connections, args.interval, args.limit
        )
        procs.stopAll()
        port = freePort()
        startNginx(procs, [], "nginx", nginxConfig(workdir, port, args.header_timeout), port)
        results["slowloris"]["nginx"] = slowloris(
            port, args.connections, args.interval, args.limit
        )
        return results
    finally:
        procs.stopAll()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("-c", "--connections", type=int, default=300)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between bytes")
    parser.add_argument("--header-timeout", type=int, default=8)
    parser.add_argument("--limit", type=float, default=30.0, help="seconds to keep trying")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "slow.json")
    args = parser.parse_args(argv)
    results = runBench("slow", bench, args)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    return 0 if results["slowloris"]["manualb"]["still_open"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
