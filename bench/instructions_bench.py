"""
Count the CPU instructions one request costs manualb: a measure that, unlike
requests a second, does not move with how busy the machine is, for telling
whether a change to the request path made it cheaper.

Run it with C{bench/instructions} (which uses the project's virtualenv).  It
starts the two nginx backends of C{bench/run}, then manualb under valgrind's
callgrind twice, each time sending a few warm-up requests over 10
keep-alive connections, then more over 10 new ones: as many again in the
first run, C{--requests} more in the second.  Both runs make the same
connections (and TLS handshakes, with C{--tls} or C{--h2}: HTTP/2 streams,
up to 10 at once on each connection), so the difference of the
two counts, divided by C{--requests}, is what a
request costs in user space: manualb's Python, CPython and the C libraries
it calls; the kernel's share (the socket calls) is not counted.  valgrind is
installed with apt-get when missing.

Only 127.0.0.1 is used, on ports the kernel hands out; the requests are
bounded in number and time; every process is stopped and every file removed
at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import benchproc
from benchlib import publish
from benchproc import BENCH, BenchError, Processes, ensureTools, pinning, runBench
from servers import backendDirectory, makeCertificate, startBackends, startManualb

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
#: Requests made before counting starts in both runs: the first connections
#: to the backends, and whatever is built on first use.
WARMUP = 20
#: callgrind slows manualb about fifty times: it starts that much slower.
START_TIMEOUT = 180.0
#: The header fields of each request over HTTP/2 (with C{--h2}): h2load's.
H2_REQUEST = [
    (":method", "GET"),
    (":path", "/"),
    (":scheme", "https"),
    (":authority", "bench"),
    ("user-agent", "bench"),
]
#: How many streams each connection has open at once with C{--h2}, as
#: C{h2load -m10}.
H2_STREAMS = 10


def load(
    port: int, count: int, connections: int = 10, limit: float = 600.0, tls: bool = False
) -> int:
    """
    Send C{count} keep-alive requests to C{port}, one at a time on each of
    C{connections} connections (over TLS when C{tls}), and return how many
    were answered (fewer only when C{limit} seconds passed first).
    """
    selector = selectors.DefaultSelector()
    left, answered = count, 0
    sockets = []
    context = _tlsContext() if tls else None
    try:
        for _ in range(min(connections, count)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if context is not None:
                sock = context.wrap_socket(sock)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            sockets.append(sock)
            sock.send(REQUEST)
            left -= 1
        deadline = time.monotonic() + limit
        while answered < count and time.monotonic() < deadline:
            for key, _ in selector.select(5):
                sock, buffer = key.fileobj, key.data
                try:
                    data = sock.recv(65536)
                except ssl.SSLWantReadError:
                    # Only part of a TLS record has come.
                    continue
                if not data:
                    raise BenchError("manualb closed a connection")
                while isinstance(sock, ssl.SSLSocket) and sock.pending():
                    data += sock.recv(65536)
                buffer += data
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    match = _LENGTH.search(buffer, 0, end + 2) if end != -1 else None
                    if match is None or len(buffer) < end + 4 + int(match.group(1)):
                        break
                    del buffer[: end + 4 + int(match.group(1))]
                    answered += 1
                    if left:
                        sock.send(REQUEST)
                        left -= 1
    finally:
        for sock in sockets:
            sock.close()
    return answered


def _tlsContext(alpn: list[str] | None = None) -> ssl.SSLContext:
    # The bench's own self-signed certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def loadH2(port: int, count: int, connections: int = 10, limit: float = 600.0) -> int:
    """
    Send C{count} requests to C{port} over HTTP/2 (TLS, ALPN C{h2}) on
    C{connections} connections, up to L{H2_STREAMS} streams open on each at
    once, as C{h2load -c10 -m10} does, and return how many were answered
    (fewer only when C{limit} seconds passed first).

    Each connection sends its streams in rounds: the next L{H2_STREAMS} in
    one write once all of the last round are answered, rather than a new
    one as each is answered as h2load does.  How many requests one read of
    the proxy gets then does not depend on timing (which varies with what
    else the machine runs), nor, with it, the count.
    """
    import h2.config
    import h2.connection
    import h2.events

    selector = selectors.DefaultSelector()
    left, answered = count, 0
    context = _tlsContext(["h2"])
    clients = []

    def send(sock, conn) -> None:
        data = conn.data_to_send()
        if data:
            sock.sendall(data)

    def request(conn) -> None:
        nonlocal left
        conn.send_headers(conn.get_next_available_stream_id(), H2_REQUEST, end_stream=True)
        left -= 1
        pending[conn] = pending.get(conn, 0) + 1

    pending: dict = {}

    try:
        for _ in range(min(connections, count)):
            sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=30)
            )
            clients.append(sock)
            if sock.selected_alpn_protocol() != "h2":
                raise BenchError("manualb did not choose h2 by ALPN")
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            )
            conn.initiate_connection()
            selector.register(sock, selectors.EVENT_READ, conn)
        # The first streams, spread over the connections.
        for _ in range(H2_STREAMS):
            for key in selector.get_map().values():
                if left:
                    request(key.data)
        for key in selector.get_map().values():
            send(key.fileobj, key.data)
        deadline = time.monotonic() + limit
        while answered < count and time.monotonic() < deadline:
            for key, _ in selector.select(5):
                sock, conn = key.fileobj, key.data
                # A blocking socket: the rest of a TLS record is waited for.
                data = sock.recv(65536)
                if not data:
                    raise BenchError("manualb closed a connection")
                while sock.pending():
                    data += sock.recv(65536)
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        answered += 1
                        pending[conn] -= 1
                        if not pending[conn]:
                            for _ in range(min(H2_STREAMS, left)):
                                request(conn)
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise BenchError(f"manualb sent {event}")
                send(sock, conn)
    finally:
        for sock in clients:
            sock.close()
    return answered


def count(args: argparse.Namespace, workdir: Path, requests: int) -> tuple[int, int]:
    """
    Run manualb under callgrind for C{WARMUP} requests, then for
    C{WARMUP} and C{requests} more on new connections; return the
    instructions it executed in all, and how many of the C{requests} were
    answered.
    """
    proxyPin, otherPin, _ = pinning()
    workdir = workdir / f"run-{requests}"
    workdir.mkdir()
    procs = Processes(workdir)
    output = workdir / "callgrind.out"
    try:
        backendPorts = startBackends(procs, otherPin, backendDirectory(workdir))
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={output}"]
        process, port = startManualb(
            procs, proxyPin + valgrind, "manualb", list(backendPorts),
            gatekeeper="waf = block\n" if args.everyday or args.waf else "",
            everyday=args.everyday,
            tls=makeCertificate(workdir) if args.tls or args.h2 else None,
        )
        if args.h2:
            loadH2(port, WARMUP)
            answered = loadH2(port, WARMUP + requests) - WARMUP
        else:
            load(port, WARMUP, tls=args.tls)
            answered = load(port, WARMUP + requests, tls=args.tls) - WARMUP
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(120)
    finally:
        procs.stopAll()
    found = re.search(r"^(?:summary|totals): (\d+)", output.read_text(errors="replace"), re.M)
    if found is None:
        raise BenchError(f"no instruction count in {output}")
    return int(found.group(1)), answered


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    benchproc.START_TIMEOUT = START_TIMEOUT
    print(f"manualb under callgrind: {WARMUP} requests twice, then {WARMUP} "
          f"and {WARMUP} + {args.requests} ...", flush=True)
    base, _ = count(args, workdir, 0)
    total, answered = count(args, workdir, args.requests)
    if answered != args.requests:
        raise BenchError(f"only {answered} of {args.requests} requests were answered")
    config = "everyday" if args.everyday else "waf" if args.waf else "bare"
    return {
        "config": config + ", h2" if args.h2 else config + ", https" if args.tls else config,
        "requests": answered,
        "instructions_per_request": round((total - base) / answered),
        "instructions_base": base,
    }


def report(results: dict) -> str:
    return (
        f"manualb ({results['config']}): {results['instructions_per_request']:,} "
        f"instructions a request, over {results['requests']:,} keep-alive requests "
        f"(start-up and warm-up: {results['instructions_base']:,})"
    )


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000,
                        help="requests counted (default 5,000)")
    parser.add_argument("--waf", action="store_true", help="with the WAF blocking")
    parser.add_argument("--everyday", action="store_true",
                        help="with the features of bench/run's everyday row")
    parser.add_argument("--tls", action="store_true",
                        help="over HTTPS (TLS 1.3, keep-alive: the handshakes are in the warm-up)")
    parser.add_argument("--h2", action="store_true",
                        help="over HTTP/2 (TLS, ALPN h2): 10 connections of up to 10 streams "
                             "each, as h2load -c10 -m10")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "instructions.json")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    return args


def tools() -> None:
    ensureTools()
    ensureTools({"valgrind": "valgrind"}, ["valgrind"])


def main(argv: list[str]) -> int:
    args = parseArgs(argv)
    results = runBench("instructions", bench, args, tools)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
