"""
Tail latency of manualb under keep-alive load, run after run, with the
kernel's listen queue counters beside each run.

Run it with C{bench/tail} (which uses the project's virtualenv).  It starts
the same two nginx backends as C{bench/run} and one manualb in front of them,
then:

 1. repeats C{wrk -t1 -cC -dD --latency} N times (5 x 8 s by default) against
    manualb, each run opening its C clients at once, and for each run reports
    requests/s, p50/p90/p99/max latency, wrk's errors, and what the kernel
    counted meanwhile: the connections manualb's listening socket dropped
    (C{ss -ltnm}: an accept queue too short for the connections arriving at
    once; their SYNs are sent again 1 s, then 3 s and 7 s later), the
    network namespace's listen overflows, SYN retransmits and retransmitted
    segments, and the longest accept queue seen on manualb's port;
 2. opens a burst of connections at once (1000 by default) to manualb's
    listener, sends each an HTTP request manualb answers itself (C{TRACE},
    405) and measures how long the slowest took to be answered, with the
    same counters.

manualb runs under C{stallwatch.py}, which notes how late a 10 ms timer of
its reactor runs and how long its garbage collections take: each run also
shows the worst of both (C{--no-stallwatch} leaves it out).

The worst run's tail is reported at the end.  C{--backlog N} makes manualb
listen with C{backlog=N} (C{--backlog 50} is Twisted's default, which manualb
used before it listened with nginx's 511).  The namespace's counters count
the other traffic on this host's loopback too; the drops of manualb's port
are its own.

Only 127.0.0.1 is used, on ports the kernel hands out; every load has a
bounded count and time, and every process started is stopped at the end.
The report is printed and written to C{bench/results/tail.json}.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import freePort, publish
from benchproc import BenchError, Processes, pinning, runBench, writeFile
from loads import checkResponse, parseWrk, toMs
from servers import backendDirectory, manualbConfig, startBackends, startManualb

BENCH = Path(__file__).resolve().parent

#: The kernel counters read before and after each run: (file, group, name).
COUNTERS = [
    ("/proc/net/netstat", "TcpExt", "ListenOverflows"),
    ("/proc/net/netstat", "TcpExt", "ListenDrops"),
    ("/proc/net/netstat", "TcpExt", "TCPSynRetrans"),
    ("/proc/net/netstat", "TcpExt", "TCPTimeouts"),
    ("/proc/net/snmp", "Tcp", "RetransSegs"),
]
#: The longest a burst may take before the connections left are counted as
#: not answered.
BURST_DEADLINE = 15.0
_LISTEN = "0A"


# -- kernel figures -----------------------------------------------------------


def readCounters() -> dict[str, int]:
    """
    The network namespace's L{COUNTERS}, by name; those this kernel lacks
    are left out.
    """
    tables: dict[str, dict[str, dict[str, int]]] = {}
    values: dict[str, int] = {}
    for path, group, name in COUNTERS:
        if path not in tables:
            tables[path] = _snmpTable(path)
        value = tables[path].get(group, {}).get(name)
        if value is not None:
            values[name] = value
    return values


def _snmpTable(path: str) -> dict[str, dict[str, int]]:
    """
    A C{/proc/net/snmp}-style file: pairs of lines, C{Group: names...} then
    C{Group: values...}.
    """
    table: dict[str, dict[str, int]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return table
    for header, values in zip(lines[::2], lines[1::2]):
        group, _, names = header.partition(":")
        _, _, numbers = values.partition(":")
        try:
            table[group] = dict(zip(names.split(), map(int, numbers.split())))
        except ValueError:
            continue
    return table


def difference(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """
    How much each counter grew.
    """
    return {name: after[name] - before.get(name, 0) for name in after}


def acceptQueue(port: int) -> int | None:
    """
    How many connections wait in the accept queue of the socket listening
    on C{port} now (what C{ss -ltn} shows in Recv-Q), from
    C{/proc/net/tcp}; L{None} when no such socket is found.
    """
    wanted = "%04X" % (port,)
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or fields[3] != _LISTEN:
            continue
        if fields[1].rsplit(":", 1)[1] != wanted:
            continue
        return int(fields[4].split(":")[1], 16)
    return None


def listener(port: int) -> dict[str, int]:
    """
    What C{ss -ltnm} tells of the socket listening on C{port}: C{limit},
    its accept queue's limit (the backlog the kernel applies: the one asked
    for, at most C{net.core.somaxconn}; Send-Q), and C{drops}, how many
    connections it dropped so far (C{skmem}'s C{d}: the SYNs and handshakes
    refused because its accept queue was full, among others).  Empty when
    C{ss} cannot tell.
    """
    try:
        done = subprocess.run(
            ["ss", "-Hltnm", f"sport = :{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    figures: dict[str, int] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        # State Recv-Q Send-Q Local Peer
        if len(fields) >= 4 and fields[3].endswith(f":{port}"):
            figures["limit"] = int(fields[2])
        drops = re.search(r"skmem:\(.*\bd(\d+)\)", line)
        if drops and "limit" in figures:
            figures["drops"] = int(drops.group(1))
    return figures


def portDrops(port: int) -> int | None:
    """
    How many connections the socket listening on C{port} dropped so far.
    """
    return listener(port).get("drops")


class QueueSampler(threading.Thread):
    """
    Samples the accept queue of a port every C{interval} seconds until
    stopped, keeping the longest seen.
    """

    def __init__(self, port: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.longest = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            queue = acceptQueue(self.port)
            if queue is not None:
                self.longest = max(self.longest, queue)
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        """
        Stop sampling and wait for the thread.
        """
        self._halt.set()
        self.join(timeout=5)


def processFigures(pid: int) -> dict[str, int]:
    """
    The CPU time (in clock ticks) and context switches of process C{pid}.
    """
    figures: dict[str, int] = {}
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        figures["cpu_ticks"] = int(fields[11]) + int(fields[12])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                figures[name] = int(value)
    except (OSError, IndexError, ValueError):
        pass
    return figures


def _grown(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    return after - before


# -- manualb's own stalls --------------------------------------------------------


def startWatchedManualb(procs: Processes, prefix: list[str], backends: list[int], backlog):
    """
    Start manualb in front of C{backends} under C{stallwatch.py}, which
    records its reactor's lateness and its garbage collections; return
    C{(process, port, report path)}.
    """
    port = freePort()
    conf = writeFile(procs.workdir / "manualb.ini", manualbConfig(port, backends, backlog))
    report = procs.workdir / "stalls.json"
    argv = [
        sys.executable, str(BENCH / "stallwatch.py"), str(report),
        "-n", "--pidfile=", "manualb", "--config", str(conf),
    ]
    return procs.start("manualb", prefix + argv, port), port, report


def readStalls(path: Path, after: float = 0.0, deadline: float = 3.0) -> dict:
    """
    The latest figures C{stallwatch.py} wrote to C{path}, once written
    after C{after} (a C{time.monotonic()}), waiting up to C{deadline}
    seconds for that; empty if there are none.
    """
    import json

    end = time.monotonic() + deadline
    figures: dict = {}
    while True:
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError):
            figures = {}
        if figures.get("written", 0.0) > after or time.monotonic() >= end:
            return figures
        time.sleep(0.1)


def stallsBetween(before: dict, after: dict, start: float, end: float) -> dict:
    """
    What manualb's reactor and collector did from C{start} to C{end}: the
    longest lateness of its timer, how many times it was 100 ms late or
    more, the longest collection, and the collections' count and time.
    """
    lags = [ms for t, ms in after.get("lags", []) if start <= t <= end]
    pauses = [ms for t, ms, _ in after.get("gc", []) if start <= t <= end]
    return {
        "lag_max_ms": max(lags, default=0.0),
        "lags_100ms": sum(1 for ms in lags if ms >= 100),
        "gc_max_ms": max(pauses, default=0.0),
        "gc_count": after.get("gc_count", 0) - before.get("gc_count", 0),
        "gc_total_ms": after.get("gc_total_ms", 0.0) - before.get("gc_total_ms", 0.0),
    }


# -- wrk ----------------------------------------------------------------------


def parseTail(output: str) -> dict:
    """
    wrk's C{--latency} figures: those of L{parseWrk}, and p75, p90 and max
    latency (ms).
    """
    result = parseWrk(output)
    for pct in ("75", "90"):
        line = re.search(rf"^\s*{pct}%\s+(\S+)", output, re.M)
        if line is None:
            raise BenchError(f"no {pct}% latency in wrk output:\n{output}")
        result[f"p{pct}_ms"] = toMs(line.group(1))
    latency = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if latency is None:
        raise BenchError(f"no latency line in wrk output:\n{output}")
    result["max_ms"] = toMs(latency.group(3))
    return result


def loadRun(
    prefix: list[str],
    port: int,
    pid: int,
    duration: int,
    connections: int,
    stalls: Path | None = None,
) -> dict:
    """
    One wrk run against manualb on C{port}, with the kernel's counters and
    manualb's own figures before and after (and its stalls, from the
    C{stallwatch.py} report C{stalls}).
    """
    argv = prefix + [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    sampler = QueueSampler(port)
    counters = readCounters()
    drops = portDrops(port)
    own = processFigures(pid)
    watched = readStalls(stalls, deadline=0) if stalls is not None else {}
    sampler.start()
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    finally:
        sampler.stop()
    end = time.monotonic()
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output}")
    result = parseTail(output)
    result["kernel"] = difference(counters, readCounters())
    result["port_drops"] = _grown(drops, portDrops(port))
    result["manualb"] = difference(own, processFigures(pid))
    result["accept_queue_longest"] = sampler.longest
    if stalls is not None:
        result["stalls"] = stallsBetween(watched, readStalls(stalls, end), start, end)
    result["wrk_output"] = output
    return result


# -- the burst ------------------------------------------------------------------


def burst(port: int, count: int, deadline: float = BURST_DEADLINE) -> dict:
    """
    Open C{count} connections to 127.0.0.1:C{port} at once (non-blocking),
    send each C{TRACE / HTTP/1.0}, which manualb answers itself, and wait
    for every answer, for at most C{deadline} seconds.

    @return: How many were answered, the time to the slowest answer and to
        the median one, how many took a second or more (a SYN sent again),
        and the kernel's counters meanwhile.
    """
    request = b"TRACE / HTTP/1.0\r\nHost: burst\r\n\r\n"
    counters = readCounters()
    drops = portDrops(port)
    selector = selectors.DefaultSelector()
    sockets: list[socket.socket] = []
    times: list[float] = []
    failed = 0
    start = time.monotonic()
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            sockets.append(s)
            s.connect_ex(("127.0.0.1", port))
            selector.register(s, selectors.EVENT_WRITE, "connecting")
        end = start + deadline
        pending = count
        while pending and time.monotonic() < end:
            for key, _ in selector.select(timeout=max(0.0, end - time.monotonic())):
                s = key.fileobj
                if key.data == "connecting":
                    error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        failed += 1
                        pending -= 1
                        selector.unregister(s)
                        continue
                    s.send(request)
                    selector.modify(s, selectors.EVENT_READ, "answering")
                else:
                    try:
                        answered = bool(s.recv(4096))
                    except OSError:
                        answered = False
                    if answered:
                        times.append(time.monotonic() - start)
                    else:
                        failed += 1
                    pending -= 1
                    selector.unregister(s)
    finally:
        selector.close()
        for s in sockets:
            s.close()
    times.sort()
    return {
        "connections": count,
        "answered": len(times),
        "failed": failed,
        "slowest_s": times[-1] if times else None,
        "median_s": times[len(times) // 2] if times else None,
        "over_1s": sum(1 for t in times if t >= 1.0),
        "kernel": difference(counters, readCounters()),
        "port_drops": _grown(drops, portDrops(port)),
    }


# -- report -------------------------------------------------------------------


def formatRuns(runs: list[dict]) -> str:
    """
    One line per run.
    """
    lines = [
        f"{'run':<5}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'drops':>7}{'ns-ovf':>8}{'synre':>7}{'retr':>6}{'acceptq':>9}"
        f"{'lag ms':>8}{'gc ms':>7}  errors"
    ]
    for number, r in enumerate(runs, 1):
        if "error" in r:
            lines.append(f"{number:<5}failed: {r['error'].splitlines()[0]}")
            continue
        k = r["kernel"]
        queue = f"{r['accept_queue_longest']}"
        detail = ", ".join(f"{name} {n}" for name, n in r["error_detail"].items())
        lines.append(
            f"{number:<5}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}"
            f"{_count(r['port_drops']):>7}{k.get('ListenOverflows', 0):>8}"
            f"{k.get('TCPSynRetrans', 0):>7}{k.get('RetransSegs', 0):>6}{queue:>9}"
            f"{_ms(r, 'lag_max_ms'):>8}{_ms(r, 'gc_max_ms'):>7}"
            f"  {r['errors']}" + (f" ({detail})" if detail else "")
        )
    return "\n".join(lines)


def _ms(run: dict, key: str) -> str:
    stalls = run.get("stalls")
    return "-" if stalls is None else f"{stalls[key]:.0f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def report(results: dict) -> str:
    """
    The whole plain-text report.
    """
    settings = results["settings"]
    runs = results["runs"]
    out = [formatRuns(runs)]
    good = [r for r in runs if "error" not in r]
    if good:
        worst = max(good, key=lambda r: r["max_ms"])
        out.append(
            f"worst tail: run {runs.index(worst) + 1}: p90 {worst['p90_ms']:.2f} ms, "
            f"p99 {worst['p99_ms']:.2f} ms, max {worst['max_ms']:.1f} ms; "
            f"req/s from {min(r['rps'] for r in good):.0f} to {max(r['rps'] for r in good):.0f}"
        )
    b = results.get("burst")
    if b:
        if "error" in b:
            out.append(f"burst failed: {b['error']}")
        else:
            k = b["kernel"]
            slowest = "-" if b["slowest_s"] is None else f"{b['slowest_s']:.3f} s"
            median = "-" if b["median_s"] is None else f"{b['median_s']:.3f} s"
            out.append(
                f"burst: {b['answered']} of {b['connections']} connections answered "
                f"(slowest {slowest}, median {median}, {b['over_1s']} took 1 s or more, "
                f"{b['failed']} failed); dropped by manualb's port: "
                f"{_count(b['port_drops'])}; namespace ListenOverflows "
                f"+{k.get('ListenOverflows', 0)}, TCPSynRetrans +{k.get('TCPSynRetrans', 0)}"
            )
    backlog = settings["backlog"] if settings["backlog"] is not None else "manualb's default"
    out.append(
        f"(manualb listen backlog: {backlog}, the kernel's limit "
        f"{results.get('accept_queue_limit')}; {settings['pinning']}; "
        f"{settings['runs']} x wrk -t1 -c{settings['connections']} -d{settings['duration_s']}s; "
        f"drops: connections dropped by manualb's listening socket (ss -ltnm d); "
        f"ns-ovf: ListenOverflows, synre: TCPSynRetrans, retr: RetransSegs of the "
        f"whole network namespace; acceptq: longest accept queue seen; lag: how "
        f"late manualb's 10 ms timer ran at worst; gc: its longest collection)"
    )
    return "\n".join(out)


# -- main -----------------------------------------------------------------------


def parseArgs(argv: list[str]) -> argparse.Namespace:
    """
    Command-line options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--runs", type=int, default=5, help="wrk runs (5, at most 50)")
    p.add_argument("-d", "--duration", type=int, default=8, help="seconds per run (8, at most 60)")
    p.add_argument("-c", "--connections", type=int, default=50,
                   help="wrk connections (50, at most 1000)")
    p.add_argument("--backlog", type=int, default=None,
                   help="listen with backlog=N (default: manualb's own)")
    p.add_argument("--burst", type=int, default=1000,
                   help="connections opened at once after the runs (1000, at most 5000; 0 skips)")
    p.add_argument("--no-stallwatch", action="store_true",
                   help="run manualb without stallwatch.py (its 10 ms timer and GC watch)")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "tail.json",
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    if not (1 <= args.runs <= 50 and 1 <= args.duration <= 60
            and 1 <= args.connections <= 1000 and 0 <= args.burst <= 5000):
        p.error("runs 1..50, duration 1..60, connections 1..1000, burst 0..5000")
    if args.backlog is not None and args.backlog < 1:
        p.error("backlog must be at least 1")
    return args


def bench(args: argparse.Namespace, workdir: Path) -> dict:
    """
    Run the whole benchmark with its files in C{workdir}; return the results.
    """
    proxyPin, otherPin, note = pinning()
    print(note, flush=True)
    procs = Processes(workdir)
    directory = backendDirectory(workdir)
    results: dict = {
        "settings": {
            "runs": args.runs, "duration_s": args.duration,
            "connections": args.connections, "backlog": args.backlog,
            "burst": args.burst, "pinning": note, "cpus": os.cpu_count(),
        },
        "runs": [],
    }
    try:
        backendPorts = startBackends(procs, otherPin, directory)
        if args.no_stallwatch:
            process, port = startManualb(
                procs, proxyPin, "manualb", list(backendPorts), backlog=args.backlog
            )
            stalls = None
        else:
            process, port, stalls = startWatchedManualb(
                procs, proxyPin, list(backendPorts), args.backlog
            )
        checkResponse(port)
        results["accept_queue_limit"] = listener(port).get("limit")
        for number in range(1, args.runs + 1):
            print(f"  run {number} of {args.runs}: {args.duration}s ...", flush=True)
            try:
                results["runs"].append(
                    loadRun(
                        otherPin, port, process.pid, args.duration, args.connections, stalls
                    )
                )
            except (BenchError, subprocess.TimeoutExpired) as e:
                print(f"  run {number}: FAILED: {e}", flush=True)
                results["runs"].append({"error": str(e)})
            if process.poll() is not None:
                raise BenchError(f"manualb died under load:\n{procs.log(process)}")
        if args.burst:
            print(f"  burst of {args.burst} connections ...", flush=True)
            try:
                results["burst"] = burst(port, args.burst)
            except OSError as e:
                results["burst"] = {"error": str(e)}
    finally:
        procs.stopAll()
    return results


def main(argv: list[str]) -> int:
    """
    Run the benchmark, print the report, write the JSON; 0 if every run went
    through without errors and every burst connection was answered.
    """
    args = parseArgs(argv)
    results = runBench("tail", bench, args)
    if isinstance(results, int):
        return results
    publish(results, report(results), args.json)
    failed = any("error" in r or r.get("errors") for r in results["runs"])
    b = results.get("burst")
    if b is not None and ("error" in b or b["answered"] != b["connections"]):
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
