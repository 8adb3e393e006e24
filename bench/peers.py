"""
The proxies C{bench/run} compares, each started in front of the same two
backends: manualb in its variants, the stock Twisted proxy, nginx, HAProxy
and the Python peers (proxy.py, mitmproxy, an aiohttp proxy).

The Python peers are installed from PyPI into a virtualenv of the bench's
own (L{PEERS_VENV}), never into the project's; it is kept outside the
source tree, so that no checker of the sources reads it.  A peer that cannot be
installed or started is a row that says so; the others go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchlib import freePort
from benchproc import BENCH, BenchError, Processes, everyCpu, writeFile
from servers import (
    Certificate,
    nginxProxyConfig,
    startManualb,
    startNginx,
    startScript,
)

HAPROXY = "/usr/sbin/haproxy"
PEERS_VENV = Path(
    os.environ.get("MANUALB_PEERS_VENV")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "manualb-bench" / "peers-venv"
)
#: The Python peers' packages, each installed on its own, so that one that
#: cannot be had keeps no other out; and the program or module each brings.
PEER_PACKAGES = {
    "proxy.py": ["proxy.py"],
    "mitmproxy": ["mitmproxy"],
    "aiohttp": ["aiohttp", "uvloop"],
}

#: The protocols of the rows: plain HTTP/1.1, HTTP/1.1 over TLS, HTTP/2.
PROTOCOLS = ("http", "https", "h2")


@dataclass
class Rig:
    """
    What every proxy is started with.

    @ivar procs: The running processes.
    @ivar proxyPin: The prefix pinning the proxy to its CPU.
    @ivar backendPorts: The two nginx backends' ports.
    @ivar tls: The certificate of the TLS listeners.
    @ivar peersPython: The python of the peers' virtualenv, or L{None}.
    @ivar unavailable: Why a peer cannot run, by the package it needs.
    """

    procs: Processes
    proxyPin: list[str]
    backendPorts: tuple[int, int]
    tls: Certificate
    peersPython: Path | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return self.procs.workdir

    def backends(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.backendPorts]


@dataclass(frozen=True)
class Peer:
    """
    A proxy of the comparison.

    @ivar name: Its name in the table (and for C{--only}).
    @ivar start: C{start(rig, tls)} starts it, plain or over TLS, and returns
        C{(process, port)}.
    @ivar protocols: Which of L{PROTOCOLS} it is measured over.
    @ivar needs: The tool (a path) or peer package (a key of
        L{PEER_PACKAGES}) it needs, or L{None}.
    @ivar closeEach: Whether its clients send C{Connection: close} on every
        request (it cannot keep a connection alive).
    @ivar note: What to know about its figures.
    """

    name: str
    start: Callable[[Rig, bool], tuple[subprocess.Popen, int]]
    protocols: tuple[str, ...] = ("http",)
    needs: str | None = None
    closeEach: bool = False
    note: str = ""

    def rowName(self, protocol: str) -> str:
        """
        The name of its row over C{protocol}: its own name for plain HTTP.
        """
        return self.name if protocol == "http" else f"{self.name} {protocol}"


# -- the Python peers' virtualenv --------------------------------------------


def peersVenv(unavailable: dict[str, str]) -> Path | None:
    """
    Make (once) the peers' virtualenv and install each package of
    L{PEER_PACKAGES} into it that is not there yet; return its python, or
    L{None} if it cannot be made.  What cannot be installed is noted in
    C{unavailable}, by package key.
    """
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {PEERS_VENV} for the Python peers ...", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "venv", str(PEERS_VENV)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if done.returncode != 0:
            for key in PEER_PACKAGES:
                unavailable[key] = f"no virtualenv: {done.stderr.strip()[-200:]}"
            return None
    for key, packages in PEER_PACKAGES.items():
        check = subprocess.run(
            [str(python), "-m", "pip", "show", "-q", *packages],
            capture_output=True, timeout=60, check=False,
        )
        if check.returncode == 0:
            continue
        print(f"installing {' '.join(packages)} into the peers' virtualenv ...", flush=True)
        try:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *packages],
                capture_output=True, text=True, timeout=600, check=False,
            )
        except subprocess.TimeoutExpired:
            unavailable[key] = "pip install timed out"
            continue
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "WARNING" not in line]
            unavailable[key] = "pip install failed: " + " ".join(lines[-2:])[-200:]
    return python


# -- starting each -----------------------------------------------------------


def _manualb(**options) -> Callable[[Rig, bool], tuple[subprocess.Popen, int]]:
    def start(rig: Rig, tls: bool):
        pin = everyCpu() if options.get("workers", 1) > 1 else rig.proxyPin
        name = "manualb" + ("-tls" if tls else "")
        return startManualb(
            rig.procs, pin, name, list(rig.backendPorts),
            tls=rig.tls if tls else None, **options,
        )
    return start


def _baseline(rig: Rig, tls: bool):
    port = freePort()
    process = startScript(rig.procs, rig.proxyPin, "baseline", "baseline_proxy.py",
                          [str(port), *rig.backends()], port)
    return process, port


def _nginx(rig: Rig, tls: bool):
    port = freePort()
    config = nginxProxyConfig(rig.workdir, port, rig.backendPorts, rig.tls if tls else None)
    return startNginx(rig.procs, rig.proxyPin, "nginx-proxy", config, port), port


def haproxyConfig(port: int, backends: list[str], tls: Certificate | None) -> str:
    """
    HAProxy in http mode with one thread, round robin over C{backends} with
    idle backend connections reused by any request (C{http-reuse always});
    over TLS with HTTP/2 by ALPN when C{tls} is given (its session cache
    and tickets are on by default).
    """
    bind = f"127.0.0.1:{port}"
    if tls is not None:
        bind += f" ssl crt {tls.combined} alpn h2,http/1.1"
    servers = "".join(
        f"    server s{i} {b} maxconn 64\n" for i, b in enumerate(backends)
    )
    return f"""\
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend bench
    bind {bind}
    default_backend backends
backend backends
    balance roundrobin
{servers}"""


def _haproxy(rig: Rig, tls: bool):
    port = freePort()
    conf = writeFile(rig.workdir / "haproxy.cfg",
                     haproxyConfig(port, rig.backends(), rig.tls if tls else None))
    return rig.procs.start("haproxy", rig.proxyPin + [HAPROXY, "-db", "-f", str(conf)], port), port


def _peerBin(rig: Rig, program: str) -> str:
    if rig.peersPython is None:
        raise BenchError("no virtualenv for the Python peers")
    return str(rig.peersPython.parent / program)


def _aiohttp(rig: Rig, tls: bool):
    port = freePort()
    certs = [str(rig.tls.cert), str(rig.tls.key)] if tls else []
    process = startScript(rig.procs, rig.proxyPin, "aiohttp", "aiohttp_proxy.py",
                          [str(port), *rig.backends(), *certs], port,
                          python=_peerBin(rig, "python"))
    return process, port


def _proxypy(rig: Rig, tls: bool):
    port = freePort()
    argv = [
        _peerBin(rig, "proxy"), "--hostname", "127.0.0.1", "--port", str(port),
        "--num-workers", "1", "--num-acceptors", "1", "--log-level", "ERROR",
        "--data-dir", str(rig.workdir / "proxypy"),
        "--enable-reverse-proxy", "--rewrite-host-header",
        "--plugins", "proxypy_routes.BenchRoutes",
    ]
    if tls:
        argv += ["--cert-file", str(rig.tls.cert), "--key-file", str(rig.tls.key)]
    env = {"PYTHONPATH": str(BENCH), "BENCH_BACKENDS": " ".join(rig.backends())}
    return rig.procs.start("proxypy", rig.proxyPin + argv, port, env=env), port


def _mitmdump(rig: Rig, tls: bool):
    port = freePort()
    argv = [
        _peerBin(rig, "mitmdump"), "--mode", f"reverse:http://{rig.backends()[0]}",
        "--listen-host", "127.0.0.1", "--listen-port", str(port), "--quiet",
        "--set", f"confdir={rig.workdir / 'mitmproxy'}",
        "--set", "stream_large_bodies=128k", "--set", "flow_detail=0",
        "--set", "termlog_verbosity=error",
    ]
    if tls:
        argv += ["--certs", f"*={rig.tls.combined}"]
    return rig.procs.start("mitmdump", rig.proxyPin + argv, port), port


#: What the bench measures, in order.  manualb (its lean HTTP/1.1 front end,
#: the default), on twisted.web's front end, with the admin listener (the
#: decision records it keeps), with the WAF blocking (what the gatekeeper
#: costs), with every everyday feature on at once, with C{workers = 2} (not pinned: its two workers may use both
#: CPUs, which wrk and the backends share with them); then the peers.
PEERS = [
    Peer("manualb", _manualb(), ("http", "https", "h2")),
    Peer("manualb twisted.web front", _manualb(frontEnd="twisted"), ("http", "https"),
         note="h2: the same HTTP/2 stack as manualb's"),
    Peer("manualb+admin", _manualb(admin=True)),
    Peer("manualb+waf", _manualb(gatekeeper="waf = block\n")),
    Peer("manualb everyday", _manualb(everyday=True, gatekeeper="waf = block\n"),
         note="access log to a file (buffer=64k flush=1s), active health checks, "
              "metrics and the "
              "decision records of the admin listener, the WAF blocking"),
    Peer("manualb x2 workers", _manualb(workers=2), note="not pinned: both CPUs"),
    Peer("twisted.web.proxy", _baseline,
         note="a new HTTP/1.0 backend connection per request"),
    Peer("nginx", _nginx, ("http", "https", "h2"), needs="/usr/sbin/nginx",
         note="1 worker; rig-bound: a lower bound"),
    Peer("HAProxy", _haproxy, ("http", "https", "h2"), needs=HAPROXY, note="nbthread 1"),
    Peer("aiohttp", _aiohttp, ("http", "https"), needs="aiohttp",
         note="aiohttp_proxy.py on uvloop; no HTTP/2"),
    Peer("proxy.py", _proxypy, ("http", "https"), needs="proxy.py", closeEach=True,
         note="Connection: close (fails on reuse); random backend; no HTTP/2"),
    Peer("mitmdump", _mitmdump, ("http", "https", "h2"), needs="mitmproxy",
         note="reverse mode: one backend only"),
]


def peerNames() -> list[str]:
    """
    Every name C{--only} takes: each peer's, and each of its rows'.
    """
    names = []
    for peer in PEERS:
        names.append(peer.name)
        names.extend(peer.rowName(p) for p in peer.protocols if p != "http")
    return names
