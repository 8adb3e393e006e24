"""
The load generators of C{bench/run} and what it reads of them: wrk (HTTP/1.1,
plain and TLS), h2load (HTTP/2), openssl (TLS session resumption), curl (one
request to check a proxy), and the proxy's CPU and memory from C{/proc}.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

from benchproc import BenchError


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


def runWrk(
    prefix: list[str], port: int, duration: int, connections: int, *,
    tls: bool = False, path: str = "/", headers: tuple[str, ...] = (),
) -> tuple[dict, str]:
    """
    Run wrk against 127.0.0.1:C{port} (over TLS with C{tls}), asking for
    C{path} with the extra C{headers}; return the parsed figures and the
    raw output.
    """
    scheme = "https" if tls else "http"
    argv = prefix + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"{scheme}://127.0.0.1:{port}{path}")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output}")
    return parseWrk(output), output


def checkResponse(port: int, tls: bool = False, http2: bool = False, path: str = "/") -> str:
    """
    One GET of C{path} through the proxy (over TLS with C{tls}, by HTTP/2
    with C{http2}), so that a broken proxy fails loudly before the load
    starts; returns the body, or for any other path than C{/} its size.
    """
    scheme = "https" if tls else "http"
    version = ["--http2"] if http2 else ["--http1.1"]
    if path == "/":
        write = ["-w", "\n%{http_code} %{http_version}"]
    else:
        write = ["-o", "/dev/null", "-w", "%{size_download}\n%{http_code} %{http_version}"]
    done = subprocess.run(
        ["curl", "-sSk", *version, "--max-time", "10", *write, f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    body, _, status = done.stdout.rpartition("\n")
    code, _, version = status.partition(" ")
    if done.returncode != 0 or code != "200":
        raise BenchError(f"GET {path} on port {port} failed: curl {done.returncode}, "
                         f"HTTP {code}, {done.stderr.strip()}")
    if http2 and version != "2":
        raise BenchError(f"GET {path} on port {port} was answered by HTTP/{version}, not HTTP/2")
    return body


def indent(text: str) -> str:
    """
    C{text} with every line indented by four spaces.
    """
    return "\n".join("    " + line for line in text.splitlines())



# -- h2load -------------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float:
    """
    The C{pct} percentile of C{sorted_values} (nearest rank).
    """
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def parseH2load(output: str, log: Path | None) -> dict:
    """
    Requests/s and the failures from h2load's output, and p50 and p99
    latency (ms) from its per-request C{--log-file} (h2load prints no
    percentiles of its own).
    """
    finished = re.search(r"^finished in [0-9.]+s, ([0-9.]+) req/s", output, re.M)
    if finished is None:
        raise BenchError(f"no req/s in h2load output:\n{output}")
    result: dict = {"rps": float(finished.group(1)), "error_detail": {}}
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout", output, re.M)
    if counts:
        total, _, done, _, failed, errored, timeout = map(int, counts.groups())
        result["requests"] = done
        for name, value in (("failed", failed), ("errored", errored), ("timeout", timeout)):
            if value:
                result["error_detail"][name] = value
    result["errors"] = result["error_detail"].get("failed", 0) + result["error_detail"].get("timeout", 0)
    latencies: list[float] = []
    if log is not None and log.exists():
        with open(log) as f:
            for line in f:
                fields = line.split("\t")
                if len(fields) >= 3 and fields[1] != "-1":
                    latencies.append(int(fields[2]) / 1000)
        log.unlink()
    latencies.sort()
    result["p50_ms"] = percentile(latencies, 50)
    result["p99_ms"] = percentile(latencies, 99)
    result["latency_samples"] = len(latencies)
    return result


def runH2load(
    prefix: list[str], port: int, duration: int, clients: int, streams: int,
    workdir: Path, path: str = "/", warmup: int = 0,
) -> tuple[dict, str]:
    """
    Run h2load against https://127.0.0.1:C{port}C{path} for C{duration}
    seconds (after C{warmup} seconds not measured) with C{clients}
    connections of C{streams} concurrent streams each; return the figures
    and the raw output.
    """
    log = workdir / "h2load.log"
    argv = prefix + [
        "h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{duration}",
        f"--log-file={log}", f"https://127.0.0.1:{port}{path}",
    ]
    if warmup:
        argv.insert(len(prefix) + 1, f"--warm-up-time={warmup}")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        log.unlink(missing_ok=True)
        raise BenchError(f"h2load failed ({done.returncode}):\n{output}")
    return parseH2load(output, log), output


def runHandshakes(prefix: list[str], port: int, duration: int, clients: int) -> dict:
    """
    Full TLS handshakes per second on 127.0.0.1:C{port}: h2load (HTTP/1.1
    over TLS) run again and again for C{duration} seconds, each time with
    C{clients} new clients making one request each.  Each client is a new
    connection with a session of its own, so every handshake is a full
    one; wrk, and a single h2load client that reconnects, would offer the
    session they got before and be resumed.
    """
    argv = prefix + ["h2load", "--h1", "-t1", f"-c{clients}", f"-n{clients}",
                     f"https://127.0.0.1:{port}/"]
    started = time.monotonic()
    deadline = started + duration
    succeeded = failed = runs = 0
    while time.monotonic() < deadline and runs < 100_000:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        runs += 1
        counts = re.search(r"(\d+) succeeded, (\d+) failed", done.stdout)
        if counts is None:
            raise BenchError(f"h2load failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        succeeded += int(counts.group(1))
        failed += int(counts.group(2))
    elapsed = time.monotonic() - started
    return {"rps": succeeded / elapsed, "handshakes": succeeded, "failed": failed,
            "runs": runs, "seconds": elapsed}


# -- TLS session resumption -------------------------------------------------


def resumption(port: int, version: str, workdir: Path, tries: int = 5, timeout: float = 10) -> dict:
    """
    Whether the server on C{port} resumes TLS C{version} ("1.2" or "1.3")
    sessions: C{openssl s_client} connects once, sends a request and saves
    the session it got (C{-sess_out}), then C{tries} times more, each
    offering the session saved by the one before (C{-sess_in}): by
    session ID or ticket in TLS 1.2, by a ticket in TLS 1.3 (which arrives
    after the handshake, so each connection reads an answer; C{s_client
    -reconnect} does not, and never resumes a TLS 1.3 session).  Counts
    the connections that say "Reused" of those that answered.
    """
    flag = {"1.2": "-tls1_2", "1.3": "-tls1_3"}[version]
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    sessions = [workdir / f"session-{version}-{i}.pem" for i in range(tries + 1)]
    reused = made = 0
    try:
        for i, session in enumerate(sessions):
            argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                    "-servername", "localhost", flag, "-ign_eof", "-sess_out", str(session)]
            # The newest session saved; none if the server gave none that
            # can be resumed.
            offered = [s for s in sessions[:i] if s.exists()]
            if offered:
                argv += ["-sess_in", str(offered[-1])]
            try:
                done = subprocess.run(argv, input=request, capture_output=True,
                                      timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                continue
            if i:
                made += 1
                reused += bool(re.search(rb"^Reused,", done.stdout, re.M))
    finally:
        for session in sessions:
            session.unlink(missing_ok=True)
    return {"reused": reused, "tries": made}


# -- what the proxy used ----------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sessionProcesses(sid: int) -> list[int]:
    """
    The processes of session C{sid}: a server started in a session of its
    own, with every child it forked (workers).
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def cpuTicks(pids: list[int]) -> int:
    """
    The CPU time (user and system, in clock ticks) used so far by C{pids}.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def cpuBusy() -> dict[int, tuple[int, int]]:
    """
    Per CPU, the ticks spent busy and in all, from C{/proc/stat}.
    """
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values]
                idle = ticks[3] + ticks[4]  # idle and iowait
                cpus[int(name[3:])] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return cpus


def statusKiB(pid: int, key: str) -> int:
    """
    The C{key} line (C{VmRSS}, C{VmHWM}) of C{/proc/PID/status} in KiB, 0 if
    gone.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Usage(threading.Thread):
    """
    What a server (the session C{sid}) uses while it is measured: its
    resident memory (the sum over its processes), sampled every
    C{interval} seconds from start to L{stop}, and, between L{begin} and
    L{end}, its CPU time and each CPU's busy time.
    """

    def __init__(self, sid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.interval = interval
        self.pids = sessionProcesses(sid)
        self.peakKiB = 0
        self.hwmKiB = 0
        self._halt = threading.Event()
        self._start: tuple[float, int, dict] | None = None

    def run(self) -> None:
        refreshed = time.monotonic()
        while not self._halt.wait(self.interval):
            if time.monotonic() - refreshed > 1.0:
                self.pids = sessionProcesses(self.sid)
                refreshed = time.monotonic()
            self.peakKiB = max(self.peakKiB, sum(statusKiB(p, "VmRSS") for p in self.pids))

    def begin(self) -> None:
        """
        Start counting CPU time.
        """
        self.pids = sessionProcesses(self.sid)
        self._start = (time.monotonic(), cpuTicks(self.pids), cpuBusy())

    def end(self) -> dict:
        """
        The CPU use since L{begin}: the proxy's (100 is one CPU) and each
        CPU's busy share, in percent.
        """
        assert self._start is not None
        wall0, ticks0, busy0 = self._start
        wall = time.monotonic() - wall0
        proxy = (cpuTicks(self.pids) - ticks0) / CLOCK_TICKS / wall * 100 if wall else 0.0
        cpus = {}
        for cpu, (busy, total) in cpuBusy().items():
            b0, t0 = busy0.get(cpu, (0, 0))
            cpus[cpu] = 100 * (busy - b0) / (total - t0) if total > t0 else 0.0
        return {"proxy_cpu_pct": proxy, "cpu_busy_pct": cpus}

    def stop(self) -> None:
        """
        Stop sampling; note the high-water mark of each process's memory.
        """
        self.hwmKiB = sum(statusKiB(p, "VmHWM") for p in sessionProcesses(self.sid))
        self.peakKiB = max(self.peakKiB, sum(statusKiB(p, "VmRSS") for p in self.pids))
        self._halt.set()
        self.join(timeout=5)
