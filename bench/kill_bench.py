"""
The kill test of the article as a benchmark: kill a backend under load,
start it again, and measure what the clients saw.

Run it with C{bench/kill} (which refreshes the project's virtualenv).  Two
backends run as processes of their own (C{python -m manualb backend}),
manualb as another (C{twistd manualb} with a temporary configuration, pinned
to CPU 0 when there are two CPUs or more), and the load generator in this
process: 50 keep-alive clients sending GETs back to back through manualb.
Three runs:

 (a) passive health only (C{fail_timeout=2s}): backend A is killed with
     SIGKILL at 3 s and started again, on the same port, at 6 s;
 (b) the same with active probes (C{health_check = ... rise=2 fall=1},
     C{fail_timeout=30s}, so that only the probes bring A back quickly);
 (c) a hung backend, which accepts connections and never answers, beside a
     good one, with C{read_timeout=1s}: only the requests sent to it before
     manualb first gave up on it should wait.

It prints the requests, failed requests (any status but 200, or an error:
there must be none), requests/s, what each backend served before the kill,
while it was down and after its restart, and the recovery time (from the
restart to A's first answer) next to the bound it should keep; writes all of
it to C{bench/results/kill.json}; and exits with status 1 if any request
failed.  Everything listens on 127.0.0.1 on ports the kernel hands out,
every wait has a deadline, and every process started is stopped at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Measure the checkout, as bench/run does, whatever the installed copy is.
sys.path.insert(0, str(ROOT))

from twisted.internet.defer import (  # noqa: E402
    Deferred,
    TimeoutError,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.error import ProcessExitedAlready  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool, readBody  # noqa: E402

from manualb.testing import BackendProcess  # noqa: E402

from benchlib import freePort, publish

# Twisted warns that readBody cannot abort a pooled connection's transport
# when cancelled; a cancelled request here counts as failed all the same.
warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)

KILL_AT = 3.0
RESTART_AT = 6.0
#: What a recovery may take beyond its bound: the next request after the
#: server is back, a probe's own time, scheduling.
SLACK = 0.5
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: How long after the end of the run the requests still in flight may take.
GRACE = 10.0
PASSIVE_FAIL_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0
PROBE_RISE = 2
READ_TIMEOUT = 1.0

#: A backend that accepts connections and never reads or answers them; it
#: exits when its standard input closes (the bench is gone).
HUNG_SERVER = r"""
import os, select, socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
held = []
while True:
    ready = select.select([listener, 0], [], [])[0]
    if 0 in ready and not os.read(0, 1024):
        break
    if listener in ready:
        held.append(listener.accept()[0])
"""


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why.
    """


# -- waiting with deadlines ---------------------------------------------------


def within(reactor, d: Deferred, seconds: float) -> Deferred[bool]:
    """
    Fires with C{True} once C{d} fires, or C{False} after C{seconds} if it
    has not; C{d} itself is left alone.
    """
    result: Deferred[bool] = Deferred()

    def late() -> None:
        if not result.called:
            result.callback(False)

    timer = reactor.callLater(seconds, late)

    def fired(value):
        if not result.called:
            timer.cancel()
            result.callback(True)
        return value

    d.addBoth(fired)
    return result


def bounded(reactor, d: Deferred, seconds: float, what: str) -> Deferred:
    """
    C{d}, failing with L{BenchError} if it does not fire within C{seconds}.
    """

    def timedOut(reason: Failure):
        reason.trap(TimeoutError)
        raise BenchError(f"{what} did not happen within {seconds:g}s")

    return d.addTimeout(seconds, reactor).addErrback(timedOut)


# -- processes ----------------------------------------------------------------


class Child(ProcessProtocol):
    """
    A process the bench starts (manualb, the hung backend): its output goes
    to a log file, C{firstLine} fires with the first line it prints, and
    C{ended} once it exits.
    """

    def __init__(self, reactor, name: str, log: Path):
        self.reactor = reactor
        self.name = name
        self.logPath = log
        self.exited = False
        self.firstLine: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._log = open(log, "wb")
        self._line = b""

    def spawn(self, argv: list[str]) -> None:
        """
        Start C{argv} in the repository's root.
        """
        self.reactor.spawnProcess(self, argv[0], argv, env=dict(os.environ), path=str(ROOT))

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        if not self.firstLine.called:
            self._line += data
            if b"\n" in self._line:
                self.firstLine.callback(self._line.split(b"\n", 1)[0].decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self._log.write(data)

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self._log.close()
        if not self.firstLine.called:
            self.firstLine.errback(BenchError(f"{self.name} exited:\n{self.tail()}"))
        self.ended.callback(None)

    def tail(self, lines: int = 20) -> str:
        """
        The last C{lines} lines of its output.
        """
        try:
            text = self.logPath.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    @inlineCallbacks
    def stop(self):
        """
        SIGTERM, then SIGKILL if it has not exited after L{STOP_TIMEOUT}
        seconds; fires once it has exited (or given up after as long again).
        """
        if self.exited:
            return
        self._signal("TERM")
        if not (yield within(self.reactor, self.ended, STOP_TIMEOUT)):
            self._signal("KILL")
            yield within(self.reactor, self.ended, STOP_TIMEOUT)


class Running:
    """
    Everything the bench started and must stop: each as a callable that
    stops it and returns a L{Deferred}.
    """

    def __init__(self) -> None:
        self._stops: list[Callable[[], Deferred]] = []

    def add(self, stop: Callable[[], Deferred]) -> None:
        """
        Remember how to stop one more process.
        """
        self._stops.append(stop)

    def stopAll(self) -> Deferred:
        """
        Stop them all, at once; fires when they are gone.  Safe to call
        again.
        """
        stops, self._stops = self._stops, []
        return gatherResults([stop() for stop in reversed(stops)], consumeErrors=True)


def killBackend(reactor, backend: BackendProcess) -> Deferred:
    """
    SIGKILL C{backend} if it runs; fires once it is gone, or after
    L{STOP_TIMEOUT} seconds.
    """
    ended = backend.kill()
    if ended is None:
        return succeed(None)
    return within(reactor, ended, STOP_TIMEOUT)


@inlineCallbacks
def startBackend(reactor, running: Running, name: str):
    """
    Start a backend process answering with C{name}; fires with it and its
    address.
    """
    backend = BackendProcess(reactor, name)
    running.add(lambda: killBackend(reactor, backend))
    address = yield bounded(reactor, backend.start(), START_TIMEOUT, f"{name} listening")
    return backend, address


@inlineCallbacks
def startHung(reactor, running: Running, workdir: Path):
    """
    Start the hung backend; fires with its address.
    """
    child = Child(reactor, "hung backend", workdir / "hung.log")
    running.add(child.stop)
    child.spawn([sys.executable, "-c", HUNG_SERVER])
    line = yield bounded(reactor, child.firstLine, START_TIMEOUT, "the hung backend listening")
    if not line.startswith("listening on "):
        raise BenchError(f"hung backend: {line}")
    return line[len("listening on ") :]


def pinning() -> tuple[list[str], str]:
    """
    Pin this process (the load generator, and the backends it starts) off
    CPU 0, and return the command prefix that runs manualb on CPU 0, and a
    note.  With one CPU, or without taskset, nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(cpus) < 2 or taskset is None:
        why = f"only {len(cpus)} CPU" if len(cpus) < 2 else "no taskset"
        return [], f"{why}: no pinning"
    os.sched_setaffinity(0, cpus[1:])
    others = ",".join(map(str, cpus[1:]))
    return [taskset, "-c", str(cpus[0])], (
        f"manualb on CPU {cpus[0]}; load generator and backends on CPU {others}"
    )


def manualbConfig(port: int, servers: list[str], upstream: dict[str, str]) -> str:
    """
    The configuration of manualb: listen on C{port}, one pool of C{servers}
    (lines with options) with the C{upstream} keys.
    """
    lines = [
        "[manualb]",
        f"listen = tcp:{port}:interface=127.0.0.1",
        "access_log = off",
        "",
        "[upstream backends]",
        "servers =",
        *("    " + server for server in servers),
        "keepalive = 64",
        *(f"{key} = {value}" for key, value in upstream.items()),
        "",
        "[route default]",
        "path = /",
        "upstream = backends",
    ]
    return "\n".join(lines) + "\n"


@inlineCallbacks
def startManualb(reactor, running: Running, workdir: Path, pin: list[str], name: str,
                 servers: list[str], upstream: dict[str, str]):
    """
    Start manualb (C{twistd -n manualb}) in front of C{servers}; fires with
    the process (a L{Child}) and its URL once it accepts connections.
    """
    port = freePort()
    config = workdir / f"{name}.ini"
    config.write_text(manualbConfig(port, servers, upstream))
    child = Child(reactor, f"manualb ({name})", workdir / f"{name}.log")
    running.add(child.stop)
    child.spawn([
        *pin, sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "manualb", "--config", str(config),
    ])
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if child.exited:
            raise BenchError(f"{child.name} exited:\n{child.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} did not listen within {START_TIMEOUT:g}s")
            yield deferLater(reactor, 0.05, lambda: None)
    return child, f"http://127.0.0.1:{port}/"


def manualbLog(child: Child) -> tuple[list[str], int]:
    """
    From manualb's log: the changes of a server's state (without their
    time stamps), and how many failed requests were sent to another server.
    """
    try:
        text = child.logPath.read_text(errors="replace")
    except OSError:
        return [], 0
    changes = [
        line.split("] ", 1)[-1]
        for line in text.splitlines()
        if " is down: " in line or " is up: " in line
    ]
    return changes, text.count("trying another server")


# -- the load -------------------------------------------------------------------


class Load:
    """
    C{clients} keep-alive clients, each sending its next GET as soon as its
    last is answered, until C{duration} seconds have passed or
    C{maxRequests} have been sent.  Requests still unanswered L{GRACE}
    seconds after that are cancelled, and count as failed.

    Each request is recorded: when it started and ended (seconds since the
    start of the run) and the backend that answered, L{None} if it failed.
    """

    def __init__(self, reactor, url: str, clients: int, duration: float, maxRequests: int,
                 names: dict[str, str]):
        self.reactor = reactor
        self.url = url.encode("ascii")
        self.clients = clients
        self.duration = duration
        self.maxRequests = maxRequests
        self.names = names
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = clients
        self.pool = pool
        self.agent = Agent(reactor, pool=pool)
        self.sent = 0
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.backends: list[str | None] = []
        self.errors: Counter = Counter()
        self.t0 = 0.0
        self.elapsed = 0.0
        self._inFlight: set[Deferred] = set()

    def now(self) -> float:
        """
        Seconds since the start of the run.
        """
        return time.monotonic() - self.t0

    def run(self) -> Deferred[None]:
        """
        Start the clients; fires once every one has stopped.
        """
        self.t0 = time.monotonic()
        self._done: Deferred[None] = Deferred()
        self._running = self.clients
        self._guard = self.reactor.callLater(self.duration + GRACE, self._cancelAll)
        for _ in range(self.clients):
            self._next()
        return self._done

    def _cancelAll(self) -> None:
        for d in list(self._inFlight):
            d.cancel()

    def _next(self) -> None:
        if self.sent >= self.maxRequests or self.now() >= self.duration:
            self._running -= 1
            if self._running == 0:
                self.elapsed = self.now()
                if self._guard.active():
                    self._guard.cancel()
                self._done.callback(None)
            return
        self.sent += 1
        start = self.now()
        d = self.agent.request(b"GET", self.url)
        d.addCallback(lambda response: readBody(response).addCallback(
            lambda body: (response.code, body)))
        self._inFlight.add(d)
        synchronous = [True]

        def record(result) -> None:
            self._inFlight.discard(d)
            self.starts.append(start)
            self.ends.append(self.now())
            self.backends.append(self._judge(result))
            if synchronous[0]:
                self.reactor.callLater(0, self._next)
            else:
                self._next()

        d.addBoth(record)
        synchronous[0] = False

    def _judge(self, result) -> str | None:
        """
        The short name of the backend that answered, or L{None}, the
        failure counted, when the request failed.
        """
        if isinstance(result, Failure):
            self.errors[result.type.__name__ + ": " + result.getErrorMessage()[:100]] += 1
            return None
        code, body = result
        name = body.decode("utf-8", "replace").strip()
        if code != 200:
            self.errors[f"status {code}: {name[:60]}"] += 1
            return None
        if name not in self.names:
            self.errors[f"unexpected body {name[:60]!r}"] += 1
            return None
        return self.names[name]

    @property
    def failed(self) -> int:
        """
        How many requests failed.
        """
        return sum(self.errors.values())

    def summary(self) -> dict:
        """
        Requests, failures, requests/s and latency percentiles.
        """
        latencies = sorted(end - start for start, end in zip(self.starts, self.ends))

        def percentile(p: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

        return {
            "requests": len(self.backends),
            "failed": self.failed,
            "errors": dict(self.errors.most_common(10)),
            "seconds": round(self.elapsed, 3),
            "rps": round(len(self.backends) / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": round(percentile(0.50), 2),
            "p99_ms": round(percentile(0.99), 2),
            "max_ms": round(percentile(1.0), 2),
            "served": dict(Counter(b for b in self.backends if b is not None)),
        }

    def timeline(self, step: float = 0.5) -> list[dict]:
        """
        Answers per backend, and failures, in each C{step} seconds of the
        run, by the time they ended.
        """
        buckets: dict[int, Counter] = {}
        for end, backend in zip(self.ends, self.backends):
            buckets.setdefault(int(end / step), Counter())[backend or "failed"] += 1
        return [
            {"t": round(i * step, 2), **dict(buckets[i])} for i in sorted(buckets)
        ]


class KillTimeline:
    """
    Kills backend A at L{KILL_AT} seconds into the run of C{load}, and
    starts it again at L{RESTART_AT}, noting when each happened.
    """

    def __init__(self, reactor, load: Load, backend: BackendProcess):
        self.reactor = reactor
        self.load = load
        self.backend = backend
        self.killed: float | None = None
        self.gone: float | None = None
        self.restarted: float | None = None
        self.listening: float | None = None
        self.errors: list[str] = []
        self._pending: list[Deferred] = []
        self._calls = [
            reactor.callLater(KILL_AT, self._kill),
            reactor.callLater(RESTART_AT, self._restart),
        ]

    def _kill(self) -> None:
        self.killed = self.load.now()
        ended = self.backend.kill()
        if ended is None:
            self.errors.append("backend A was not running at the kill")
            return
        ended.addCallback(lambda _: setattr(self, "gone", self.load.now()))
        self._pending.append(ended)

    def _restart(self) -> None:
        self.restarted = self.load.now()
        started = self.backend.start()

        def listening(address: str) -> None:
            self.listening = self.load.now()

        def failed(reason: Failure) -> None:
            self.errors.append("restart failed: " + reason.getErrorMessage())

        started.addCallbacks(listening, failed)
        self._pending.append(started)

    @inlineCallbacks
    def finish(self):
        """
        Cancel what has not happened yet, and wait (within
        L{START_TIMEOUT}) for what is under way.
        """
        for call in self._calls:
            if call.active():
                call.cancel()
                self.errors.append("the run ended before the kill or the restart")
        if self._pending and not (
            yield within(self.reactor, gatherResults(self._pending), START_TIMEOUT)
        ):
            self.errors.append("the kill or the restart did not finish in time")


def phases(load: Load, timeline: KillTimeline) -> dict[str, dict[str, int]]:
    """
    Answers per backend before the kill, while A was down (from its
    process being gone to A listening again) and after its restart, by the
    time they ended.  Answers already on their way when the signal went
    count as before.
    """
    killed = timeline.gone if timeline.gone is not None else float("inf")
    back = timeline.listening if timeline.listening is not None else float("inf")
    counts = {"before": Counter(), "down": Counter(), "after": Counter()}
    for end, backend in zip(load.ends, load.backends):
        if backend is None:
            continue
        phase = "before" if end < killed else "down" if end < back else "after"
        counts[phase][backend] += 1
    return {phase: {name: c[name] for name in "AB"} for phase, c in counts.items()}


def recovery(load: Load, timeline: KillTimeline) -> float | None:
    """
    Seconds from A listening again to its first answer, L{None} if it gave
    none in the run.
    """
    if timeline.listening is None:
        return None
    ends = [end for end, backend in zip(load.ends, load.backends)
            if backend == "A" and end >= timeline.listening]
    return min(ends) - timeline.listening if ends else None


# -- the runs -----------------------------------------------------------------


@inlineCallbacks
def killRun(reactor, args, running: Running, workdir: Path, pin: list[str], name: str,
            serverOptions: str, upstream: dict[str, str], bound: float):
    """
    One kill test: backends A and B, manualb in front of them with
    C{serverOptions} on each server line and the C{upstream} keys, the load
    for C{args.duration} seconds, A killed and started again meanwhile.
    """
    try:
        a, addressA = yield startBackend(reactor, running, "Backend A")
        b, addressB = yield startBackend(reactor, running, "Backend B")
        servers = [f"{addressA} {serverOptions}", f"{addressB} {serverOptions}"]
        lb, url = yield startManualb(reactor, running, workdir, pin, name, servers, upstream)
        load = Load(reactor, url, args.clients, args.duration, args.max_requests,
                    {"Backend A": "A", "Backend B": "B"})
        finished = load.run()
        timeline = KillTimeline(reactor, load, a)
        yield finished
        yield timeline.finish()
        yield load.pool.closeCachedConnections()
        if lb.exited:
            raise BenchError(f"manualb died during the run:\n{lb.tail()}")
    finally:
        yield running.stopAll()
    changes, retried = manualbLog(lb)
    result = load.summary()
    recovered = recovery(load, timeline)
    result.update({
        "servers": servers,
        "upstream": upstream,
        "killed_at_s": _round(timeline.killed),
        "gone_at_s": _round(timeline.gone),
        "restarted_at_s": _round(timeline.restarted),
        "listening_at_s": _round(timeline.listening),
        "phases": phases(load, timeline),
        "recovery_s": _round(recovered),
        "bound_s": bound,
        "within_bound": recovered is not None and recovered <= bound,
        "timeline_errors": timeline.errors,
        "retried": retried,
        "state_changes": changes,
        "timeline": load.timeline(),
    })
    return result


@inlineCallbacks
def hungRun(reactor, args, running: Running, workdir: Path, pin: list[str]):
    """
    The hung backend beside a good one, with C{read_timeout=1s}: count the
    requests that waited for it.
    """
    try:
        hung = yield startHung(reactor, running, workdir)
        b, addressB = yield startBackend(reactor, running, "Backend B")
        servers = [f"{hung} fail_timeout=30s", addressB]
        upstream = {"read_timeout": f"{READ_TIMEOUT:g}s"}
        lb, url = yield startManualb(reactor, running, workdir, pin, "hung", servers, upstream)
        load = Load(reactor, url, args.clients, args.duration, args.max_requests,
                    {"Backend B": "B"})
        yield load.run()
        yield load.pool.closeCachedConnections()
        if lb.exited:
            raise BenchError(f"manualb died during the run:\n{lb.tail()}")
    finally:
        yield running.stopAll()
    changes, retried = manualbLog(lb)
    slow = sum(1 for s, e in zip(load.starts, load.ends) if e - s >= READ_TIMEOUT)
    result = load.summary()
    result.update({
        "servers": servers,
        "upstream": upstream,
        "slow": slow,
        "slow_bound": args.clients,
        "within_bound": slow <= args.clients,
        "retried": retried,
        "state_changes": changes,
        "timeline": load.timeline(),
    })
    return result


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@inlineCallbacks
def bench(reactor, args, running: Running, workdir: Path):
    """
    The three runs, one after another; fires with the results.
    """
    pin, note = pinning()
    print(note, flush=True)
    results: dict = {"settings": {
        "clients": args.clients, "duration_s": args.duration,
        "max_requests": args.max_requests, "kill_at_s": KILL_AT,
        "restart_at_s": RESTART_AT, "pinning": note, "cpus": os.cpu_count(),
    }, "runs": {}}
    passive = f"fail_timeout={PASSIVE_FAIL_TIMEOUT:g}s"
    probes = (f"path=/ interval={PROBE_INTERVAL:g}s timeout=500ms "
              f"rise={PROBE_RISE} fall=1")
    runs = [
        ("passive", f"(a) passive only, {passive}",
         lambda: killRun(reactor, args, running, workdir, pin, "passive", passive, {},
                         PASSIVE_FAIL_TIMEOUT + SLACK)),
        ("active", f"(b) active probes, health_check = {probes}, fail_timeout=30s",
         lambda: killRun(reactor, args, running, workdir, pin, "active", "fail_timeout=30s",
                         {"health_check": probes}, PROBE_RISE * PROBE_INTERVAL + SLACK)),
        ("hung", f"(c) hung backend beside a good one, read_timeout={READ_TIMEOUT:g}s",
         lambda: hungRun(reactor, args, running, workdir, pin)),
    ]
    for key, title, run in runs:
        if args.only and key not in args.only:
            continue
        print(f"{title}: {args.duration:g} s ...", flush=True)
        try:
            results["runs"][key] = yield run()
        except BenchError as e:
            print(f"  FAILED: {e}", flush=True)
            results["runs"][key] = {"error": str(e)}
        results["runs"][key]["title"] = title
    return results


# -- report -------------------------------------------------------------------


def report(results: dict) -> str:
    """
    The plain-text report: a table for the kill runs, one for the hung
    backend, then manualb's changes of state and any errors.
    """
    settings = results["settings"]
    runs = results["runs"]
    out = [
        f"kill test: {settings['clients']} keep-alive clients, {settings['duration_s']:g} s; "
        f"SIGKILL backend A at {KILL_AT:g} s, restart it at {RESTART_AT:g} s",
        f"{'run':<12}{'requests':>9}{'failed':>7}{'req/s':>8}{'p99 ms':>8}"
        f"   {'A before/down/after':<20}{'B before/down/after':<21}{'recovery':>9}   expected",
    ]
    for key in ("passive", "active"):
        r = runs.get(key)
        if r is None:
            continue
        if "error" in r:
            out.append(f"{key:<12}failed: {r['error'].splitlines()[0]}")
            continue
        p = r["phases"]
        a = "/".join(str(p[phase]["A"]) for phase in ("before", "down", "after"))
        b = "/".join(str(p[phase]["B"]) for phase in ("before", "down", "after"))
        recovered = "never" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
        verdict = "ok" if r["within_bound"] else "OVER"
        out.append(
            f"{key:<12}{r['requests']:>9}{r['failed']:>7}{r['rps']:>8.0f}{r['p99_ms']:>8.1f}"
            f"   {a:<20}{b:<21}{recovered:>9}   <= {r['bound_s']:.2f} s {verdict}"
        )
    out.append(
        f"  (expected: passive <= fail_timeout {PASSIVE_FAIL_TIMEOUT:g}s + {SLACK:g}s; "
        f"active <= rise {PROBE_RISE} x interval {PROBE_INTERVAL:g}s + {SLACK:g}s; "
        "recovery counts from A listening again)"
    )
    r = runs.get("hung")
    if r is not None:
        out.append("")
        out.append(f"hung backend (accepts, never answers) beside backend B, "
                   f"read_timeout={READ_TIMEOUT:g}s, fail_timeout=30s on it:")
        if "error" in r:
            out.append(f"  failed: {r['error'].splitlines()[0]}")
        else:
            verdict = "ok" if r["within_bound"] else "OVER"
            out.append(f"{'':<12}{'requests':>9}{'failed':>7}{'req/s':>8}{'max ms':>9}"
                       f"   {'waited >= 1 s':<14}expected")
            out.append(f"{'hung':<12}{r['requests']:>9}{r['failed']:>7}{r['rps']:>8.0f}"
                       f"{r['max_ms']:>9.0f}   {r['slow']:<14}<= {r['slow_bound']} "
                       f"(the clients) {verdict}")
    for key in ("passive", "active", "hung"):
        r = runs.get(key)
        if not r or "error" in r:
            continue
        out.append("")
        if "killed_at_s" in r:
            out.append(
                f"{key}: SIGKILL to A at {_seconds(r['killed_at_s'])}, gone at "
                f"{_seconds(r['gone_at_s'])}; started again at {_seconds(r['restarted_at_s'])}, "
                f"listening at {_seconds(r['listening_at_s'])}"
            )
        out.append(f"{key}: {r['retried']} tries that failed were sent to the other server")
        out.extend("  manualb: " + line for line in r["state_changes"])
        for error, count in r["errors"].items():
            out.append(f"  FAILED x{count}: {error}")
        for error in r.get("timeline_errors", []):
            out.append(f"  timeline: {error}")
    out.append(f"({settings['pinning']})")
    return "\n".join(out)


# -- main ---------------------------------------------------------------------


def parseArgs(argv: list[str]) -> argparse.Namespace:
    """
    Command-line options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--duration", type=float, default=12.0,
                   help="seconds of load per run (12; at least 9)")
    p.add_argument("-n", "--max-requests", type=int, default=500_000,
                   help="at most this many requests per run (500000)")
    p.add_argument("-c", "--clients", type=int, default=50,
                   help="concurrent keep-alive clients (50)")
    p.add_argument("--only", choices=["passive", "active", "hung"], action="append",
                   help="only this run (repeatable)")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "kill.json",
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    if args.duration < RESTART_AT + 3:
        p.error(f"--duration must be at least {RESTART_AT + 3:g} s: A restarts at {RESTART_AT:g} s")
    if args.clients < 1 or args.max_requests < 1:
        p.error("--clients and --max-requests must be at least 1")
    return args


def main(argv: list[str]) -> int:
    """
    Run the benchmark, print the report, write the JSON; 1 if any request
    failed or a run could not be made.
    """
    args = parseArgs(argv)
    from twisted.internet import reactor

    running = Running()
    outcome: list = []
    workdir = Path(tempfile.mkdtemp(prefix="manualb-kill-"))
    # Ctrl-C or SIGTERM stop the reactor: the processes go first.
    reactor.addSystemEventTrigger("before", "shutdown", running.stopAll)

    def done(result) -> None:
        outcome.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: bench(reactor, args, running, workdir).addBoth(done))
    try:
        reactor.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not outcome:
        print("interrupted", file=sys.stderr)
        return 130
    results = outcome[0]
    if isinstance(results, Failure):
        print(f"error: {results.getTraceback()}", file=sys.stderr)
        return 1
    publish(results, report(results), args.json)
    runs = results["runs"].values()
    return 1 if any("error" in r or r["failed"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
