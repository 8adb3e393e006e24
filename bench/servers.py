"""
The servers of the benchmarks: the nginx backends, nginx and manualb as
proxies, the bench's own Python scripts, and the self-signed certificate
the TLS listeners serve.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import freePort
from benchproc import BENCH, NGINX, BenchError, Processes, waitForPort, writeFile


@dataclass(frozen=True)
class Certificate:
    """
    A certificate for C{localhost} and C{127.0.0.1} and its key.

    @ivar cert: The PEM certificate.
    @ivar key: The PEM private key.
    @ivar combined: Both in one file (HAProxy's C{crt}, mitmproxy's
        C{--certs}).
    """

    cert: Path
    key: Path
    combined: Path


def makeCertificate(workdir: Path) -> Certificate:
    """
    Make a self-signed RSA 2048 certificate in C{workdir} with openssl.

    RSA, as most sites still serve: its signature makes a full handshake
    cost the server far more than the client, so that handshakes/s
    measures the proxy, not the load generator.
    """
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"openssl could not make a certificate: {done.stderr.strip()}")
    combined = writeFile(workdir / "combined.pem", cert.read_text() + key.read_text())
    for path in (cert, key, combined):
        path.chmod(0o644)
    return Certificate(cert, key, combined)


def nginxMain(workdir: Path, name: str) -> str:
    """
    The top of an nginx configuration that keeps every file in C{workdir}.
    """
    tmp = workdir / f"{name}-tmp"
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
"""


def backendConfig(workdir: Path, ports: tuple[int, int], bigdir: Path) -> str:
    """
    nginx configuration of the two backends: C{/} answers a short text,
    C{/big} is the large file in C{bigdir} and C{/1m} its 1 MiB file.
    """
    servers = ""
    for port, label in zip(ports, "AB"):
        servers += f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "Backend {label}\\n"; }}
        location = /big {{ root {bigdir}; default_type application/octet-stream; }}
        location = /1m {{ root {bigdir}; default_type application/octet-stream; }}
    }}
"""
    return nginxMain(workdir, "backends") + "    sendfile on;\n" + servers + "}\n"


def nginxProxyConfig(
    workdir: Path, port: int, backends: tuple[int, int], tls: Certificate | None = None
) -> str:
    """
    nginx configuration of nginx as a keep-alive reverse proxy; over TLS
    (with HTTP/2 by ALPN and a session cache) when C{tls} is given.
    """
    listen = f"127.0.0.1:{port}"
    if tls is not None:
        listen += f""" ssl http2;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m"""
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in backends)
    return nginxMain(workdir, "nginx-proxy") + f"""\
    upstream backends {{
{servers}        keepalive 64;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


#: The gatekeeper of the "manualb+waf" run: the web application firewall
#: blocking, at its default level.
WAF_GATEKEEPER = "waf = block\n"


#: The active health checks of the "manualb everyday" run.
EVERYDAY_HEALTH_CHECK = "health_check = path=/ interval=1s timeout=500ms rise=2 fall=3\n"
#: How the "manualb everyday" run buffers its access log, as a busy nginx
#: site does.
EVERYDAY_LOG_BUFFER = " buffer=64k flush=1s"


def manualbConfig(
    port: int,
    backends: list[int],
    backlog: int | None = None,
    gatekeeper: str = "",
    workers: int = 1,
    frontEnd: str = "lean",
    admin: int | None = None,
    tls: Certificate | None = None,
    accessLog: str = "off",
    upstream: str = "",
    maxConnections: int = 4096,
) -> str:
    """
    manualb configuration: listen on C{port} (with C{backlog=N} when
    given), round robin over C{backends}, in C{workers} processes, served
    by the HTTP/1.1 front end C{frontEnd}; C{gatekeeper} adds lines to its
    C{[gatekeeper]} section, C{upstream} to its C{[upstream]} one;
    C{admin} is the port of an admin listener, or L{None} for none;
    C{accessLog} the access log's file, or C{off}; C{maxConnections} the
    gatekeeper's C{max_connections}.  With C{tls}, the
    listener is an C{sni:} one serving that certificate (HTTP/1.1 and
    HTTP/2 by ALPN).
    """
    servers = "".join(f"    127.0.0.1:{p}\n" for p in backends)
    scheme = "tcp" if tls is None else "sni"
    listen = f"{scheme}:{port}:interface=127.0.0.1"
    if backlog is not None:
        listen += f":backlog={backlog}"
    adminLine = f"admin = tcp:{admin}:interface=127.0.0.1\n" if admin is not None else ""
    return f"""\
[manualb]
listen = {listen}
access_log = {accessLog}
workers = {workers}
front_end = {frontEnd}
{adminLine}
[gatekeeper]
; The streaming run uploads far more than nginx's 1m default.
client_max_body_size = 0
max_connections = {maxConnections}
{gatekeeper}
[upstream backends]
servers =
{servers}keepalive = 64
{upstream}
[route default]
path = /
upstream = backends
""" + (f"""
[tls]
certificates =
    localhost {tls.cert} {tls.key}
""" if tls is not None else "")


# -- starting servers -------------------------------------------------------


def backendDirectory(workdir: Path) -> Path:
    """
    Make the directory of the backends' files in C{workdir}, both readable
    by nginx's workers (an unprivileged user when started as root).
    """
    workdir.chmod(0o755)
    directory = workdir / "www"
    directory.mkdir(mode=0o755)
    return directory


def startBackends(procs: Processes, prefix: list[str], directory: Path) -> tuple[int, int]:
    """
    Start the two nginx backends (L{backendConfig}, serving the files of
    C{directory}) pinned with C{prefix}; return their ports once both
    listen.
    """
    ports = (freePort(), freePort())
    process = startNginx(procs, prefix, "backends", backendConfig(procs.workdir, ports, directory), ports[0])
    waitForPort(ports[1], process, "backends")
    return ports


def startNginx(procs: Processes, prefix: list[str], name: str, config: str, port: int):
    """
    Start nginx with configuration C{config} (in the foreground, so that it
    can be stopped by its id).
    """
    workdir = procs.workdir
    (workdir / f"{name}-tmp").mkdir(exist_ok=True)
    conf = writeFile(workdir / f"{name}.conf", config)
    argv = [
        NGINX, "-p", str(workdir), "-c", str(conf),
        "-e", str(workdir / f"{name}-error.log"),
    ]
    return procs.start(name, prefix + argv, port)


def startManualb(
    procs: Processes,
    prefix: list[str],
    name: str,
    backends: list[int],
    backlog: int | None = None,
    gatekeeper: str = "",
    workers: int = 1,
    frontEnd: str = "lean",
    admin: bool = False,
    tls: Certificate | None = None,
    everyday: bool = False,
    maxConnections: int = 4096,
):
    """
    Start manualb in front of C{backends}, in C{workers} processes, with the
    HTTP/1.1 front end C{frontEnd} (and an admin listener when C{admin}),
    over TLS with C{tls}; return C{(process, port)}.  With C{everyday}, the
    features a site runs with are on besides: the access log (to a file,
    buffered: L{EVERYDAY_LOG_BUFFER}), active health checks, and the admin
    listener (metrics, decision records).
    """
    port = freePort()
    accessLog, upstream = "off", ""
    if everyday:
        admin = True
        accessLog = str(procs.workdir / f"{name}-access.log") + EVERYDAY_LOG_BUFFER
        upstream = EVERYDAY_HEALTH_CHECK
    conf = writeFile(
        procs.workdir / f"{name}.ini",
        manualbConfig(
            port, backends, backlog, gatekeeper, workers, frontEnd,
            freePort() if admin else None, tls, accessLog, upstream, maxConnections,
        ),
    )
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "manualb", "--config", str(conf),
    ]
    return procs.start(name, prefix + argv, port), port


def startScript(
    procs: Processes, prefix: list[str], name: str, script: str, args: list[str], port: int,
    python: str | Path = sys.executable,
):
    """
    Start one of the Python helper scripts in C{bench/} (with C{python}).
    """
    argv = [str(python), str(BENCH / script), *args]
    return procs.start(name, prefix + argv, port)
