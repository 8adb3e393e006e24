"""
Benchmark manualb against twisted.web.proxy and nginx, and measure its memory
while it streams a large body.

Run it with C{bench/run} (which uses the project's virtualenv).  In one run
it:

 1. starts two fast backends (one nginx, two server blocks) and, in turn,
    three proxies in front of them -- manualb, a twisted.web.proxy baseline
    (C{bench/baseline_proxy.py}) and nginx -- and loads each with wrk,
    printing requests/s and p50/p99 latency;
 2. streams a large body (default 1 GiB) through manualb, downloading from
    nginx and uploading to C{bench/sink_backend.py}, while sampling manualb's
    resident memory.

The results are printed as a table and written to
C{bench/results/latest.json}.  Only 127.0.0.1 is used, on ports the kernel
hands out; every process started is stopped, and every temporary file
removed, at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import freePort, publish

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NGINX = "/usr/sbin/nginx"
TOOLS = {"wrk": "wrk", "nginx": NGINX, "curl": "curl", "taskset": "taskset"}
PACKAGES = ["wrk", "nginx-light", "curl", "util-linux"]
START_TIMEOUT = 10.0
MiB = 1024 * 1024


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why.
    """


# -- tools ------------------------------------------------------------------


def missingTools() -> list[str]:
    """
    Names of the external tools that are not installed.
    """
    return [name for name, path in TOOLS.items() if shutil.which(path) is None]


def ensureTools() -> None:
    """
    Install wrk, nginx, curl and taskset with apt-get if any is missing.
    """
    missing = missingTools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(
            f"missing tools: {', '.join(missing)}; install them "
            f"(apt-get install {' '.join(PACKAGES)}) or run as root"
        )
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES],
        check=True,
        timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    still = missingTools()
    if still:
        raise BenchError(f"still missing after apt-get: {', '.join(still)}")


def pinning() -> tuple[list[str], list[str], str]:
    """
    Return the command prefixes that pin the proxy under test and the rest
    (backends, load generator, curl) to different CPUs, and a note.

    With fewer than two usable CPUs nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], [], f"only {len(cpus)} CPU available: no taskset pinning"
    proxyCpu, otherCpu = cpus[0], cpus[1]
    return (
        ["taskset", "-c", str(proxyCpu)],
        ["taskset", "-c", str(otherCpu)],
        f"proxy on CPU {proxyCpu}; backends, wrk and curl on CPU {otherCpu}",
    )


# -- ports and processes ----------------------------------------------------


def waitForPort(port: int, process: subprocess.Popen, name: str) -> None:
    """
    Return once 127.0.0.1:C{port} accepts connections; fail if C{process}
    exits first or L{START_TIMEOUT} seconds pass.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {START_TIMEOUT}s")


class Processes:
    """
    The servers the benchmark starts; L{stopAll} stops every one of them.

    Each runs in its own session (process group), with its output in a log
    file in the work directory, so that it, and any children it forks
    (nginx workers), can be stopped by its own id.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str], port: int) -> subprocess.Popen:
        """
        Start C{argv} and wait until it listens on C{port}.
        """
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.running.append((name, process, log))
        try:
            waitForPort(port, process, name)
        except BenchError as e:
            raise BenchError(f"{e}\n--- {log}:\n{tail(log)}") from None
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """
        Stop one process (and its process group): SIGTERM, then SIGKILL
        after 5 seconds.
        """
        for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # nginx workers, or anything else left in the group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.running = [r for r in self.running if r[1] is not process]

    def stopAll(self) -> None:
        """
        Stop every process still running, newest first; a second Ctrl-C
        does not cut this short.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, process, _ in reversed(list(self.running)):
            self.stop(process)

    def log(self, process: subprocess.Popen) -> str:
        """
        The tail of C{process}'s output.
        """
        for _, p, log in self.running:
            if p is process:
                return tail(log)
        return ""


def tail(path: Path, lines: int = 20) -> str:
    """
    The last C{lines} lines of a text file, or "" if it cannot be read.
    """
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- configurations ---------------------------------------------------------


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
    C{/big} is the large file in C{bigdir}.
    """
    servers = ""
    for port, label in zip(ports, "AB"):
        servers += f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "Backend {label}\\n"; }}
        location = /big {{ root {bigdir}; default_type application/octet-stream; }}
    }}
"""
    return nginxMain(workdir, "backends") + "    sendfile on;\n" + servers + "}\n"


def nginxProxyConfig(workdir: Path, port: int, backends: tuple[int, int]) -> str:
    """
    nginx configuration of nginx as a keep-alive reverse proxy.
    """
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in backends)
    return nginxMain(workdir, "nginx-proxy") + f"""\
    upstream backends {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
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


def manualbConfig(
    port: int,
    backends: list[int],
    backlog: int | None = None,
    gatekeeper: str = "",
    workers: int = 1,
    frontEnd: str = "lean",
    admin: int | None = None,
) -> str:
    """
    manualb configuration: listen on C{port} (with C{backlog=N} when
    given), round robin over C{backends}, in C{workers} processes, served
    by the HTTP/1.1 front end C{frontEnd}; C{gatekeeper} adds lines to its
    C{[gatekeeper]} section; C{admin} is the port of an admin listener, or
    L{None} for none.
    """
    servers = "".join(f"    127.0.0.1:{p}\n" for p in backends)
    listen = f"tcp:{port}:interface=127.0.0.1"
    if backlog is not None:
        listen += f":backlog={backlog}"
    adminLine = f"admin = tcp:{admin}:interface=127.0.0.1\n" if admin is not None else ""
    return f"""\
[manualb]
listen = {listen}
access_log = off
workers = {workers}
front_end = {frontEnd}
{adminLine}
[gatekeeper]
; The streaming run uploads far more than nginx's 1m default.
client_max_body_size = 0
max_connections = 4096
{gatekeeper}
[upstream backends]
servers =
{servers}keepalive = 64

[route default]
path = /
upstream = backends
"""


def writeFile(path: Path, text: str) -> Path:
    """
    Write C{text} to C{path} and return C{path}.
    """
    path.write_text(text)
    return path


# -- starting servers -------------------------------------------------------


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
):
    """
    Start manualb in front of C{backends}, in C{workers} processes, with the
    HTTP/1.1 front end C{frontEnd} (and an admin listener when C{admin});
    return C{(process, port)}.
    """
    port = freePort()
    conf = writeFile(
        procs.workdir / f"{name}.ini",
        manualbConfig(
            port, backends, backlog, gatekeeper, workers, frontEnd,
            freePort() if admin else None,
        ),
    )
    argv = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "manualb", "--config", str(conf),
    ]
    return procs.start(name, prefix + argv, port), port


def startScript(procs: Processes, prefix: list[str], name: str, script: str, args: list[str], port: int):
    """
    Start one of the Python helper scripts in C{bench/}.
    """
    argv = [sys.executable, str(BENCH / script), *args]
    return procs.start(name, prefix + argv, port)


# -- wrk --------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def toMs(value: str) -> float:
    """
    Convert a wrk duration such as C{"812.00us"}, C{"1.2ms"} or C{"2.0s"}
    to milliseconds.
    """
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", value.strip())
    if match is None:
        raise BenchError(f"cannot read wrk duration {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parseWrk(output: str) -> dict:
    """
    Requests/s, p50 and p99 latency (ms) and the error counts from wrk's
    C{--latency} output.
    """
    result: dict = {"errors": 0, "error_detail": {}}
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.M)
    if rps is None:
        raise BenchError(f"no Requests/sec in wrk output:\n{output}")
    result["rps"] = float(rps.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        line = re.search(rf"^\s*{pct}%\s+(\S+)", output, re.M)
        if line is None:
            raise BenchError(f"no {pct}% latency in wrk output:\n{output}")
        result[key] = toMs(line.group(1))
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    result["requests"] = int(total.group(1)) if total else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    if non2xx:
        result["error_detail"]["non2xx"] = int(non2xx.group(1))
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        for name, value in zip(("connect", "read", "write", "timeout"), sock.groups()):
            if int(value):
                result["error_detail"][name] = int(value)
    result["errors"] = sum(result["error_detail"].values())
    return result


def runWrk(prefix: list[str], port: int, duration: int, connections: int) -> tuple[dict, str]:
    """
    Run wrk against 127.0.0.1:C{port}; return the parsed figures and the raw
    output.
    """
    argv = prefix + [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output}")
    return parseWrk(output), output


def checkResponse(port: int) -> str:
    """
    One plain GET of C{/} through the proxy, so that a broken proxy fails
    loudly before the load starts; returns the body.
    """
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    body, _, code = done.stdout.rpartition("\n")
    if done.returncode != 0 or code != "200":
        raise BenchError(f"GET / on port {port} failed: curl {done.returncode}, "
                         f"HTTP {code}, {done.stderr.strip()}")
    return body


def loadTest(procs, name, process, port, other, args) -> dict:
    """
    Check that the proxy C{name} listening on C{port} reaches both backends,
    warm it up, then measure it.
    """
    seen = sorted({checkResponse(port).strip() for _ in range(4)})
    if len(seen) != 2:
        print(f"  {name}: WARNING: 4 requests reached {seen}, not both backends", flush=True)
    print(f"  {name}: warm-up {args.warmup}s, then {args.duration}s ...", flush=True)
    if args.warmup:
        runWrk(other, port, args.warmup, args.connections)
    result, output = runWrk(other, port, args.duration, args.connections)
    result["wrk_output"] = output
    result["backends_seen"] = seen
    if process.poll() is not None:
        raise BenchError(f"{name} died under load:\n{procs.log(process)}")
    if result["errors"]:
        print(f"  {name}: wrk reported errors:\n{indent(output)}", flush=True)
    return result


def indent(text: str) -> str:
    """
    C{text} with every line indented by four spaces.
    """
    return "\n".join("    " + line for line in text.splitlines())


# -- streaming --------------------------------------------------------------


def rssKiB(pid: int) -> int | None:
    """
    VmRSS of process C{pid} in KiB, or L{None} once it is gone.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RSSSampler(threading.Thread):
    """
    Samples a process's VmRSS every C{interval} seconds until stopped,
    keeping the peak.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = rssKiB(pid) or 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            rss = rssKiB(self.pid)
            if rss is None:
                return
            self.samples += 1
            self.peak = max(self.peak, rss)

    def stop(self) -> None:
        """
        Stop sampling and wait for the thread.
        """
        self._halt.set()
        self.join(timeout=5)


def runCurl(prefix: list[str], argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """
    Run curl (pinned with C{prefix}) with a bounded run time.
    """
    return subprocess.run(
        prefix + ["curl", "-sS", "--max-time", str(int(timeout)), *argv],
        capture_output=True, text=True, timeout=timeout + 30, check=False,
    )


def streamThrough(pid: int, prefix: list[str], argv: list[str], timeout: float) -> dict:
    """
    Run one curl transfer while sampling the RSS of manualb (C{pid}).

    C{argv} must make curl print C{"BYTES SECONDS"} last on standard output.
    """
    before = rssKiB(pid)
    sampler = RSSSampler(pid)
    sampler.start()
    try:
        done = runCurl(prefix, argv, timeout)
    finally:
        sampler.stop()
    after = rssKiB(pid)
    if done.returncode != 0:
        raise BenchError(f"curl {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    size, seconds = lines[-1].split()
    return {
        "bytes": int(size),
        "seconds": float(seconds),
        "body": "\n".join(lines[:-1]).strip(),
        "rss_before_mib": (before or 0) / 1024,
        "rss_peak_mib": max(sampler.peak, after or 0) / 1024,
        "rss_after_mib": (after or 0) / 1024,
        "rss_samples": sampler.samples,
        "alive": after is not None,
    }


def summarise(result: dict, expected: int, received: int) -> dict:
    """
    Add throughput, growth and the completeness check to a transfer result.
    """
    result["expected_bytes"] = expected
    result["received_bytes"] = received
    result["complete"] = received == expected
    result["mib_per_s"] = expected / MiB / result["seconds"] if result["seconds"] else 0.0
    result["rss_growth_mib"] = result["rss_peak_mib"] - result["rss_before_mib"]
    return result


def warmPageCache(path: Path, limit: float = 60.0) -> None:
    """
    Read C{path} once, so that no transfer pays for the kernel's first read
    of the sparse file (which alone runs at a few hundred MiB/s here).
    """
    deadline = time.monotonic() + limit
    with open(path, "rb", buffering=0) as f:
        while f.read(4 * MiB) and time.monotonic() < deadline:
            pass


def directMiBs(prefix: list[str], argv: list[str], timeout: float) -> float:
    """
    MiB/s of one curl transfer straight to a backend, for reference.

    C{argv} must make curl print C{"BYTES SECONDS"} last on standard output.
    """
    done = runCurl(prefix, argv, timeout)
    if done.returncode != 0:
        raise BenchError(f"curl {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    size, seconds = done.stdout.strip().splitlines()[-1].split()
    return int(size) / MiB / float(seconds) if float(seconds) else 0.0


def downloadArgv(port: int) -> list[str]:
    """
    curl arguments that fetch C{/big} from C{port} and print its size and
    time.
    """
    return ["-o", "/dev/null", "-w", "%{size_download} %{time_total}\n",
            f"http://127.0.0.1:{port}/big"]


def uploadArgv(port: int, bigfile: Path) -> list[str]:
    """
    curl arguments that PUT C{bigfile} to C{port} and print the answer, then
    the size and time.
    """
    return ["-T", str(bigfile), "-w", "\n%{size_upload} %{time_total}\n",
            f"http://127.0.0.1:{port}/upload"]


def streamDownload(procs, proxyPin, otherPin, backendPorts, size, timeout) -> dict:
    """
    Download the large file from the nginx backends through a fresh manualb
    (and once directly from a backend, for reference).
    """
    direct = directMiBs(otherPin, downloadArgv(backendPorts[0]), timeout)
    process, port = startManualb(procs, proxyPin, "manualb-download", list(backendPorts))
    try:
        checkResponse(port)
        result = streamThrough(process.pid, otherPin, downloadArgv(port), timeout)
        if process.poll() is not None:
            raise BenchError(f"manualb died during the download:\n{procs.log(process)}")
        result["direct_mib_per_s"] = direct
        return summarise(result, size, result["bytes"])
    finally:
        procs.stop(process)


def streamUpload(procs, proxyPin, otherPin, bigfile, size, timeout) -> dict:
    """
    PUT the large file through a fresh manualb to the counting sink backend
    (and once directly to the sink, for reference).
    """
    sinkPort = freePort()
    sink = startScript(procs, otherPin, "sink", "sink_backend.py", [str(sinkPort)], sinkPort)
    process = None
    try:
        direct = directMiBs(otherPin, uploadArgv(sinkPort, bigfile), timeout)
        process, port = startManualb(procs, proxyPin, "manualb-upload", [sinkPort])
        checkResponse(port)
        result = streamThrough(process.pid, otherPin, uploadArgv(port, bigfile), timeout)
        result["direct_mib_per_s"] = direct
        if process.poll() is not None:
            raise BenchError(f"manualb died during the upload:\n{procs.log(process)}")
        try:
            received = int(result["body"])
        except ValueError:
            raise BenchError(f"sink answered {result['body']!r}, not a byte count") from None
        return summarise(result, size, received)
    finally:
        if process is not None:
            procs.stop(process)
        procs.stop(sink)


# -- report -----------------------------------------------------------------


def formatTable(load: dict) -> str:
    """
    The throughput/latency table.
    """
    lines = [f"{'proxy':<20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   errors"]
    for name, r in load.items():
        if "error" in r:
            lines.append(f"{name:<20}failed: {r['error'].splitlines()[0]}")
            continue
        detail = ", ".join(f"{k} {v}" for k, v in r["error_detail"].items())
        errors = f"{r['errors']}" + (f" ({detail})" if detail else "")
        lines.append(f"{name:<20}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}   {errors}")
    return "\n".join(lines)


def formatStream(label: str, r: dict) -> str:
    """
    One line about a streaming transfer.
    """
    if "error" in r:
        return f"{label} failed: {r['error']}"
    check = "complete" if r["complete"] else (
        f"INCOMPLETE: {r['received_bytes']} of {r['expected_bytes']} bytes")
    return (
        f"{label} {r['mib_per_s']:.0f} MiB/s ({r['seconds']:.1f} s, {check}), "
        f"RSS {r['rss_before_mib']:.0f} -> {r['rss_peak_mib']:.0f} MiB "
        f"(+{r['rss_growth_mib']:.1f} MiB, peak of {r['rss_samples']} samples); "
        f"direct without proxy {r['direct_mib_per_s']:.0f} MiB/s"
    )


def report(results: dict) -> str:
    """
    The whole plain-text report.
    """
    load = results["load"]
    out = [formatTable(load)]
    m, b = load.get("manualb", {}), load.get("twisted.web.proxy", {})
    if "rps" in m and "rps" in b and b["rps"]:
        out.append(f"manualb / baseline: {m['rps'] / b['rps']:.1f}x")
    t = load.get("manualb twisted.web front", {})
    if "rps" in t and "rps" in b and b["rps"]:
        out.append(f"manualb (twisted.web front end) / baseline: {t['rps'] / b['rps']:.1f}x")
    n = load.get("nginx", {})
    if "rps" in m and "rps" in n and n["rps"]:
        out.append(f"manualb / nginx: {m['rps'] / n['rps']:.2f}x")
    s = results.get("streaming", {})
    mib = results["settings"]["stream_mib"]
    if s:
        out.append(f"streaming {mib:g} MiB through manualb:")
        for key in ("download", "upload"):
            if key in s:
                out.append("  " + formatStream(f"{key}:", s[key]))
    out.append(f"({results['settings']['pinning']}; wrk -t1 -c{results['settings']['connections']} "
               f"-d{results['settings']['duration_s']}s)")
    return "\n".join(out)


# -- main -------------------------------------------------------------------


#: What the load test measures, in order: manualb (its lean HTTP/1.1 front
#: end, the default), manualb on twisted.web's front end, manualb with its WAF
#: blocking (what the gatekeeper costs), manualb with C{workers = 2} (not
#: pinned: its two workers may use both CPUs, which wrk and the backends
#: share with them), and the peers.
PROXIES = ["manualb", "manualb twisted.web front", "manualb+admin", "manualb+waf", "manualb x2 workers", "twisted.web.proxy", "nginx"]


def parseArgs(argv: list[str]) -> argparse.Namespace:
    """
    Command-line options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--duration", type=int, default=10, help="wrk seconds per proxy (10)")
    p.add_argument("-c", "--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds (2)")
    p.add_argument("--size", type=float, default=1024,
                   help="MiB streamed through manualb each way (1024; 0 skips)")
    p.add_argument("--stream-timeout", type=float, default=120,
                   help="seconds allowed per streaming transfer (120)")
    p.add_argument("--only", choices=PROXIES, action="append",
                   help="measure only this proxy (repeatable)")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json",
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.warmup < 0 or args.size < 0:
        p.error("duration and connections must be >= 1, warmup and size >= 0")
    return args


def runLoad(procs, proxyPin, otherPin, backendPorts, args) -> dict:
    """
    Measure each proxy in turn in front of the two backends.
    """
    load: dict = {}
    for name in PROXIES:
        if args.only and name not in args.only:
            continue
        process = None
        try:
            if name == "manualb":
                process, port = startManualb(procs, proxyPin, "manualb", list(backendPorts))
            elif name == "manualb twisted.web front":
                process, port = startManualb(
                    procs, proxyPin, "manualb-twisted", list(backendPorts), frontEnd="twisted"
                )
            elif name == "manualb+admin":
                process, port = startManualb(
                    procs, proxyPin, "manualb-admin", list(backendPorts), admin=True
                )
            elif name == "manualb+waf":
                process, port = startManualb(
                    procs, proxyPin, "manualb-waf", list(backendPorts), gatekeeper=WAF_GATEKEEPER
                )
            elif name == "manualb x2 workers":
                process, port = startManualb(
                    procs, [], "manualb-2w", list(backendPorts), workers=2
                )
            elif name == "twisted.web.proxy":
                port = freePort()
                backends = [f"127.0.0.1:{p}" for p in backendPorts]
                process = startScript(procs, proxyPin, "baseline", "baseline_proxy.py",
                                      [str(port), *backends], port)
            else:
                port = freePort()
                process = startNginx(procs, proxyPin, "nginx-proxy",
                                     nginxProxyConfig(procs.workdir, port, backendPorts), port)
            load[name] = loadTest(procs, name, process, port, otherPin, args)
        except (BenchError, subprocess.TimeoutExpired) as e:
            print(f"  {name}: FAILED: {e}", flush=True)
            load[name] = {"error": str(e)}
        finally:
            if process is not None:
                procs.stop(process)
    return load


def runStreaming(procs, proxyPin, otherPin, backendPorts, bigfile, size, args) -> dict:
    """
    Stream the large file through manualb, down and up.
    """
    streaming: dict = {}
    warmPageCache(bigfile)
    for key, run in (
        ("download", lambda: streamDownload(procs, proxyPin, otherPin, backendPorts, size, args.stream_timeout)),
        ("upload", lambda: streamUpload(procs, proxyPin, otherPin, bigfile, size, args.stream_timeout)),
    ):
        print(f"  streaming {size / MiB:g} MiB through manualb: {key} ...", flush=True)
        try:
            streaming[key] = run()
        except (BenchError, subprocess.TimeoutExpired) as e:
            print(f"  {key}: FAILED: {e}", flush=True)
            streaming[key] = {"error": str(e)}
    return streaming


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    """
    Run the whole benchmark with its files in C{workdir}; return the results.
    """
    proxyPin, otherPin, note = pinning()
    print(note, flush=True)
    procs = Processes(workdir)
    # nginx workers run as an unprivileged user when started as root: they
    # must be able to read the big file and use the temp directories.
    workdir.chmod(0o755)
    bigdir = workdir / "www"
    bigdir.mkdir(mode=0o755)
    bigdir.chmod(0o755)
    bigfile = bigdir / "big"
    size = int(args.size * MiB)
    with open(bigfile, "wb") as f:
        f.truncate(size)  # sparse, like `truncate -s`
    bigfile.chmod(0o644)
    results: dict = {
        "settings": {
            "duration_s": args.duration, "connections": args.connections,
            "warmup_s": args.warmup, "stream_mib": args.size, "pinning": note,
            "cpus": os.cpu_count(),
        },
    }
    try:
        backendPorts = (freePort(), freePort())
        startNginx(procs, otherPin, "backends",
                   backendConfig(workdir, backendPorts, bigdir), backendPorts[0])
        waitForPort(backendPorts[1], procs.running[-1][1], "backends")
        print("load test:", flush=True)
        results["load"] = runLoad(procs, proxyPin, otherPin, backendPorts, args)
        if size:
            results["streaming"] = runStreaming(
                procs, proxyPin, otherPin, backendPorts, bigfile, size, args)
    finally:
        procs.stopAll()
    return results


def interrupt(signum, frame) -> None:
    """
    Signal handler: turn SIGTERM into L{KeyboardInterrupt}.
    """
    raise KeyboardInterrupt


def runBench(name: str, bench, args) -> dict | int:
    """
    Run C{bench(args, workdir)} in a fresh temporary work directory, with
    the tools installed first; return its results, or the exit status when
    it could not run.  Ctrl-C and SIGTERM stop it cleanly (servers killed,
    files removed), even when started with SIGINT ignored (as a background
    job).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        ensureTools()
    except (BenchError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix=f"manualb-{name}-"))
    try:
        return bench(args, workdir)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    """
    Run the benchmark, print the report, write the JSON; 0 if all went well.
    """
    args = parseArgs(argv)
    results = runBench("bench", bench, args)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    failed = any("error" in r or r.get("errors") for r in results["load"].values())
    failed |= any("error" in r or not r["complete"] for r in results.get("streaming", {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
