"""
Tests for the supervisor of C{workers = N} (L{manualb.supervisor}), its
admin API (L{manualb.fleetadmin}) and merging (L{manualb.merging}), with a
reactor whose processes are fakes; and for the C{workers} key.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from manualb.__main__ import check
from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.fleetadmin import FleetAdmin
from manualb.listensockets import ListenSockets, socketAddress
from manualb.merging import mergeMetrics, mergeStatus
from manualb.supervisor import READY_FD, Backoff, Supervisor, WorkerState

CONFIG = """\
[manualb]
listen = tcp:0:interface=127.0.0.1
workers = %(workers)s
shutdown_timeout = 10s
%(extra)s
[upstream pool]
servers = 127.0.0.1:8001
[route default]
path = /
upstream = pool
"""


class FakeProcess:
    """
    A spawned process that records the signals it is sent.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor whose C{spawnProcess} records what is spawned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple] = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None, childFDs=None, **kw):
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs, process))
        protocol.makeConnection(process)
        return process


def ready(protocol) -> None:
    protocol.childDataReceived(READY_FD, b"ready\n")


def end(protocol, code: int = 0, signal: int | None = None) -> None:
    if code == 0 and signal is None:
        protocol.processEnded(_Failure(ProcessDone(0)))
    else:
        protocol.processEnded(_Failure(ProcessTerminated(code, signal)))


class _Failure:
    def __init__(self, value) -> None:
        self.value = value


class SupervisorTestCase(SynchronousTestCase):
    def supervisor(self, workers: int = 2, extra: str = "") -> tuple[Supervisor, ProcessReactor]:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "lb.ini")
        self.write(workers, extra)
        reactor = ProcessReactor()
        supervisor = Supervisor(loadConfig(self.path, requireListen=True), reactor, "python")
        supervisor.bind()
        self.addCleanup(supervisor.sockets.release, ())
        supervisor.start()
        return supervisor, reactor

    def write(self, workers: int = 2, extra: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(CONFIG % {"workers": workers, "extra": extra})


class StartTests(SupervisorTestCase):
    def test_spawnsWorkersWithSockets(self):
        """
        Starting spawns C{workers} processes of C{python -m manualb worker},
        each given the listening socket at a descriptor of its own, named
        in C{--sockets} with its line and family.
        """
        supervisor, reactor = self.supervisor(3)
        self.assertEqual(len(reactor.spawned), 3)
        [sock] = supervisor.sockets.sockets.values()
        for protocol, args, childFDs, process in reactor.spawned:
            self.assertEqual(args[1:4], ["-m", "manualb", "worker"])
            passed = json.loads(args[args.index("--sockets") + 1])
            self.assertEqual(passed, [["tcp:0:interface=127.0.0.1", 4, socket.AF_INET]])
            self.assertEqual(childFDs[4], sock.fileno())
            self.assertEqual(childFDs[READY_FD], "r")
        self.assertEqual(
            [worker.state for worker in supervisor.workers.values()], [WorkerState.STARTING] * 3
        )
        ready(reactor.spawned[0][0])
        self.assertIs(supervisor.workers[1].state, WorkerState.RUNNING)
        self.assertIs(supervisor.workers[2].state, WorkerState.STARTING)

    def test_workerLogLines(self):
        """
        A worker's standard error goes into the supervisor's log, line by
        line, named by the worker.
        """
        supervisor, reactor = self.supervisor(1)
        said = []
        supervisor.workerSaid = lambda worker, line: said.append((worker.number, line))
        protocol = reactor.spawned[0][0]
        protocol.childDataReceived(2, b"one\ntw")
        protocol.childDataReceived(2, b"o\n")
        self.assertEqual(said, [(1, "one"), (1, "two")])


class RestartTests(SupervisorTestCase):
    def test_restartWithBackoff(self):
        """
        A worker that dies is restarted: at once the first time, then after
        a delay that doubles while it keeps dying young, up to the
        maximum; the others are left alone.
        """
        supervisor, reactor = self.supervisor(2)
        delays = []
        for attempt in range(8):
            protocol = reactor.spawned[-1][0] if attempt else reactor.spawned[0][0]
            count = len(reactor.spawned)
            end(protocol, 1)
            self.assertIs(protocol.worker.state, WorkerState.DEAD)
            [call] = reactor.getDelayedCalls()
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(delays[-1])
            self.assertEqual(len(reactor.spawned), count + 1)
        self.assertEqual(delays, [0, 0.5, 1, 2, 4, 8, 16, 30])
        self.assertEqual(supervisor.workers[1].restarts, 8)
        self.assertEqual(supervisor.workers[2].restarts, 0)
        self.assertEqual(reactor.spawned[-1][3].signals, [])

    def test_stableWorkerRestartsAtOnce(self):
        """
        A worker that ran for C{stableAfter} seconds before it died is
        restarted at once, whatever came before.
        """
        supervisor, reactor = self.supervisor(1)
        end(reactor.spawned[0][0], 1)
        reactor.advance(0)
        end(reactor.spawned[1][0], 1)
        reactor.advance(0.5)
        reactor.advance(Backoff().stableAfter)
        end(reactor.spawned[2][0], signal=signal.SIGKILL)
        [call] = reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), reactor.seconds())
        self.assertEqual(supervisor.workers[1].exitStatus, "killed by SIGKILL")


class SignalTests(SupervisorTestCase):
    def test_reloadForwardsHup(self):
        """
        A reload whose listen lines are the same sends C{SIGHUP} to every
        running worker; one still starting gets it once it is ready.
        """
        supervisor, reactor = self.supervisor(2)
        ready(reactor.spawned[0][0])
        applied, message = supervisor.reloadFile()
        self.assertTrue(applied, message)
        self.assertIn("each of the 2 workers reloads in place", message)
        self.assertEqual(reactor.spawned[0][3].signals, ["HUP"])
        self.assertEqual(reactor.spawned[1][3].signals, [])
        ready(reactor.spawned[1][0])
        self.assertEqual(reactor.spawned[1][3].signals, ["HUP"])
        self.assertEqual(len(reactor.spawned), 2)

    def test_brokenFileRefused(self):
        """
        A reload of a broken file changes nothing and signals no worker.
        """
        supervisor, reactor = self.supervisor(2)
        with open(self.path, "w") as f:
            f.write("[manualb]\nlisten = tcp:0\nworkers = none\n")
        applied, message = supervisor.reloadFile()
        self.assertFalse(applied)
        self.assertIn("Reload refused", message)
        self.assertIn("workers", message)
        self.assertEqual([each[3].signals for each in reactor.spawned], [[], []])

    def test_listenChangeReplacesWorkers(self):
        """
        A reload with a new listen line binds it, starts a new worker for
        each, and stops each old one once its successor is ready; the new
        workers are given both sockets.
        """
        supervisor, reactor = self.supervisor(2)
        for each in reactor.spawned:
            ready(each[0])
        self.write(2, "")
        with open(self.path) as f:
            text = f.read()
        with open(self.path, "w") as f:
            f.write(text.replace("interface=127.0.0.1\n", "interface=127.0.0.1\n    tcp:0:interface=127.0.0.1:backlog=9\n", 1))
        applied, message = supervisor.reloadFile()
        self.assertTrue(applied, message)
        self.assertIn("2 new workers replace the old ones", message)
        self.assertEqual(len(supervisor.sockets.sockets), 2)
        self.assertEqual(len(reactor.spawned), 4)
        self.assertEqual(len(json.loads(reactor.spawned[2][1][reactor.spawned[2][1].index("--sockets") + 1])), 2)
        old = [each[3] for each in reactor.spawned[:2]]
        self.assertEqual([p.signals for p in old], [[], []])
        ready(reactor.spawned[3][0])
        self.assertEqual([p.signals for p in old], [[], ["TERM"]])
        ready(reactor.spawned[2][0])
        self.assertEqual([p.signals for p in old], [["TERM"], ["TERM"]])
        end(reactor.spawned[0][0])
        end(reactor.spawned[1][0])
        # Stopped as told: not restarted.
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(sorted(w.generation for w in supervisor.live()), [2, 2])

    def test_reopenForwardsUsr1(self):
        supervisor, reactor = self.supervisor(2)
        supervisor.accessLog.reopen()
        self.assertEqual([each[3].signals for each in reactor.spawned], [["USR1"], ["USR1"]])

    def test_stopWaitsForAll(self):
        """
        Stopping sends C{SIGTERM} to every worker, closes the supervisor's
        copies of the sockets, and fires once all have ended, none
        restarted.
        """
        supervisor, reactor = self.supervisor(2)
        stopped = supervisor.stop()
        self.assertEqual([each[3].signals for each in reactor.spawned], [["TERM"], ["TERM"]])
        self.assertEqual(supervisor.sockets.sockets, {})
        end(reactor.spawned[0][0])
        self.assertNoResult(stopped)
        end(reactor.spawned[1][0], 1)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(reactor.spawned), 2)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopKillsAfterTimeout(self):
        """
        A worker still there C{shutdown_timeout} plus the grace after the
        stop is killed; a second stop signal (L{Supervisor.close}) hurries
        every worker with another C{SIGTERM}.
        """
        supervisor, reactor = self.supervisor(2)
        stopped = supervisor.stop()
        supervisor.close()
        self.assertEqual([each[3].signals for each in reactor.spawned], [["TERM", "TERM"]] * 2)
        end(reactor.spawned[0][0])
        reactor.advance(10 + supervisor.grace)
        self.assertEqual(reactor.spawned[1][3].signals, ["TERM", "TERM", "KILL"])
        end(reactor.spawned[1][0], signal=signal.SIGKILL)
        self.successResultOf(stopped)

    def test_diesDuringStopNotRestarted(self):
        supervisor, reactor = self.supervisor(1)
        end(reactor.spawned[0][0], 1)
        supervisor.stop()
        reactor.advance(60)
        self.assertEqual(len(reactor.spawned), 1)


class MergeTests(SynchronousTestCase):
    def server(self, name, requests, failures=0, active=0, p99=0.1, samples=2):
        return {
            "server": name,
            "state": "up",
            "requests": requests,
            "failures": failures,
            "active": active,
            "latency": {"samples": samples, "p50": p99 / 2, "p90": p99, "p99": p99, "max": p99},
        }

    def test_status(self):
        """
        The merged status sums each server's requests, failures and requests
        in flight, takes the largest percentile, and keeps each worker's own
        with its total.
        """
        one = {"upstreams": {"pool": {"strategy": "rr", "servers": [self.server("a", 3, 1, 1, 0.2)]}}}
        two = {
            "upstreams": {
                "pool": {"strategy": "rr", "servers": [self.server("a", 4, 0, 2, 0.1), self.server("b", 5)]}
            }
        }
        merged = mergeStatus([({"worker": 1}, one), ({"worker": 2}, two), ({"worker": 3}, None)], 7.0)
        a, b = merged["upstreams"]["pool"]["servers"]
        self.assertEqual((a["requests"], a["failures"], a["active"]), (7, 1, 3))
        self.assertEqual(a["latency"]["p99"], 0.2)
        self.assertEqual(a["latency"]["samples"], 4)
        self.assertEqual(b["requests"], 5)
        self.assertEqual(merged["upstreams"]["pool"]["strategy"], "rr")
        self.assertEqual([w.get("requests") for w in merged["workers"]], [3, 9, None])
        self.assertEqual(merged["workers"][0]["status"], one)
        self.assertEqual(merged["time"], 7.0)

    def test_metrics(self):
        """
        Samples of the same name and labels are summed, histograms bucket by
        bucket; C{_created} keeps the earliest, C{manualb_server_up} the
        least; a family only one worker has keeps its samples together.
        """
        one = (
            "# HELP manualb_requests_total Requests.\n"
            "# TYPE manualb_requests_total counter\n"
            'manualb_requests_total{route="r",status="2xx"} 3.0\n'
            'manualb_requests_created{route="r",status="2xx"} 100.0\n'
            "# TYPE manualb_server_up gauge\n"
            'manualb_server_up{server="a"} 1.0\n'
            "# TYPE manualb_upstream_response_seconds histogram\n"
            'manualb_upstream_response_seconds_bucket{le="0.1"} 2.0\n'
            'manualb_upstream_response_seconds_bucket{le="+Inf"} 3.0\n'
        )
        two = (
            "# HELP manualb_requests_total Requests.\n"
            "# TYPE manualb_requests_total counter\n"
            'manualb_requests_total{route="r",status="2xx"} 4.0\n'
            'manualb_requests_total{route="r",status="5xx"} 1.0\n'
            'manualb_requests_created{route="r",status="2xx"} 90.0\n'
            "# TYPE manualb_server_up gauge\n"
            'manualb_server_up{server="a"} 0.0\n'
            "# TYPE manualb_upstream_response_seconds histogram\n"
            'manualb_upstream_response_seconds_bucket{le="0.1"} 1.0\n'
            'manualb_upstream_response_seconds_bucket{le="+Inf"} 5.0\n'
            "# TYPE manualb_client_connections gauge\n"
            "manualb_client_connections 2.0\n"
        )
        merged = mergeMetrics([one, two]).splitlines()
        self.assertEqual(
            merged,
            [
                "# HELP manualb_requests_total Requests.",
                "# TYPE manualb_requests_total counter",
                'manualb_requests_total{route="r",status="2xx"} 7.0',
                'manualb_requests_created{route="r",status="2xx"} 90.0',
                'manualb_requests_total{route="r",status="5xx"} 1.0',
                "# TYPE manualb_server_up gauge",
                'manualb_server_up{server="a"} 0.0',
                "# TYPE manualb_upstream_response_seconds histogram",
                'manualb_upstream_response_seconds_bucket{le="0.1"} 3.0',
                'manualb_upstream_response_seconds_bucket{le="+Inf"} 8.0',
                "# TYPE manualb_client_connections gauge",
                "manualb_client_connections 2.0",
            ],
        )


class FleetAdminTests(SupervisorTestCase):
    def admin(self):
        supervisor, reactor = self.supervisor(2, "admin = tcp:0:interface=127.0.0.1")
        self.addCleanup(lambda: supervisor.directory and os.rmdir(supervisor.directory))
        for each in reactor.spawned:
            ready(each[0])
        self.asked: list = []
        self.answers: dict = {}

        def ask(path, method, target, body=None):
            self.asked.append((path, method, target, body))
            answer = self.answers.get((path, target))
            if isinstance(answer, Exception):
                return Deferred()
            return succeed(answer or (200, b"{}"))

        return FleetAdmin(supervisor, reactor, ask), supervisor, reactor

    def render(self, resource, path: bytes, method: bytes = b"GET", body: bytes = b""):
        request = DummyRequest(path.split(b"/")[1:])
        request.path = path
        request.method = method
        request.content = io.BytesIO(body)
        result = resource.render(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
        return request

    def test_status(self):
        """
        C{/api/status} asks every running worker and merges their answers.
        """
        resource, supervisor, reactor = self.admin()
        paths = [w.adminPath for w in supervisor.workers.values()]
        status = {"upstreams": {"pool": {"servers": [{"server": "a", "requests": 2, "latency": {}}]}}}
        for path in paths:
            self.answers[path, b"/api/status"] = (200, json.dumps(status).encode())
        request = self.render(resource, b"/api/status")
        self.assertEqual(request.finished, 1)
        merged = json.loads(b"".join(request.written))
        self.assertEqual(merged["upstreams"]["pool"]["servers"][0]["requests"], 4)
        self.assertEqual([w["worker"] for w in merged["workers"]], [1, 2])
        self.assertEqual([w["state"] for w in merged["workers"]], ["running", "running"])

    def test_changeAppliedEverywhereAndReplayed(self):
        """
        A change is posted to every worker, and to a worker started later
        once it is ready.
        """
        resource, supervisor, reactor = self.admin()
        target = b"/api/upstreams/pool/servers/127.0.0.1:8001"
        request = self.render(resource, target, b"POST", b'{"state": "drain"}')
        self.assertEqual(request.finished, 1)
        self.assertEqual(
            [(m, t, b) for p, m, t, b in self.asked], [(b"POST", target, b'{"state": "drain"}')] * 2
        )
        self.assertEqual(supervisor.changes, [(target, b'{"state": "drain"}')])
        end(reactor.spawned[0][0], 1)
        reactor.advance(0)
        del self.asked[:]
        ready(reactor.spawned[-1][0])
        self.assertEqual(
            self.asked, [(supervisor.workers[1].adminPath, b"POST", target, b'{"state": "drain"}')]
        )

    def test_refusedChangeNotKept(self):
        resource, supervisor, reactor = self.admin()
        target = b"/api/upstreams/pool/servers/nowhere:1"
        for worker in supervisor.workers.values():
            self.answers[worker.adminPath, target] = (404, b'{"error": "no"}')
        request = self.render(resource, target, b"POST", b'{"state": "drain"}')
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(supervisor.changes, [])

    def test_explainFromTheWorkerThatKnows(self):
        resource, supervisor, reactor = self.admin()
        target = b"/api/explain/abc"
        first, second = supervisor.workers.values()
        self.answers[first.adminPath, target] = (404, b"{}")
        self.answers[second.adminPath, target] = (200, b'{"id": "abc"}')
        request = self.render(resource, target)
        self.assertEqual(b"".join(request.written), b'{"id": "abc"}')

    def test_reload(self):
        """
        C{POST /api/reload} is the supervisor's reload: its workers are sent
        C{SIGHUP}.
        """
        resource, supervisor, reactor = self.admin()
        request = self.render(resource, b"/api/reload", b"POST")
        self.assertEqual(request.responseCode, 200)
        answer = json.loads(b"".join(request.written))
        self.assertTrue(answer["reloaded"])
        self.assertIn("each of the 2 workers reloads in place", answer["message"])
        self.assertEqual([each[3].signals for each in reactor.spawned], [["HUP"], ["HUP"]])

    def test_token(self):
        resource, supervisor, reactor = self.admin()
        supervisor.adminToken = b"secret"
        request = self.render(resource, b"/api/status")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(self.asked, [])


class ConfigTests(SynchronousTestCase):
    def test_default(self):
        self.assertEqual(parseConfig(CONFIG % {"workers": 1, "extra": ""}).workers, 1)
        text = CONFIG.replace("workers = %(workers)s\n", "") % {"extra": ""}
        self.assertEqual(parseConfig(text).workers, 1)

    def test_auto(self):
        self.assertEqual(
            parseConfig(CONFIG % {"workers": "Auto", "extra": ""}).workers, os.cpu_count() or 1
        )

    def test_bad(self):
        path = self.mktemp()
        for value in ("0", "-2", "many"):
            with open(path, "w") as f:
                f.write(CONFIG % {"workers": value, "extra": ""})
            e = self.assertRaises(ConfigError, loadConfig, path)
            self.assertIn(
                "lb.ini, line 3: [manualb] workers: expected a number of processes "
                "from 1, or auto, got %r" % (value,),
                str(e).replace(path, "lb.ini"),
            )

    def test_checkAccepts(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(CONFIG % {"workers": "auto", "extra": ""})
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(check(path, out, err), 0, err.getvalue())
        self.assertIn("is ok", out.getvalue())

    def test_checkRefusesUnsharedLine(self):
        """
        C{check} refuses a listen line that workers cannot share, naming the
        key.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write((CONFIG % {"workers": 2, "extra": ""}).replace(
                "tcp:0:interface=127.0.0.1", "systemd:domain=INET:index=0"))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(check(path, out, err), 1)
        self.assertIn("line 3: [manualb] workers: workers share listen lines", err.getvalue())

    def test_socketAddress(self):
        self.assertEqual(socketAddress("tcp:80:interface=10.0.0.1").address, ("10.0.0.1", 80))
        self.assertEqual(socketAddress("tcp6:443").family, socket.AF_INET6)
        self.assertEqual(socketAddress("ssl:443:privateKey=k:interface=\\:\\:1").address, ("::1", 443))
        self.assertEqual(socketAddress("sni:8443:backlog=7").backlog, 7)
        self.assertEqual(socketAddress("unix:/x.sock:mode=600").mode, 0o600)

    def test_bindFailureClosesWhatItBound(self):
        sockets = ListenSockets()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        e = self.assertRaises(
            ConfigError, sockets.bind, "lb.ini", ["tcp:0:interface=127.0.0.1", "tcp:%d:interface=127.0.0.1" % port]
        )
        self.assertIn("cannot listen on tcp:%d" % port, str(e))
        self.assertEqual(sockets.sockets, {})
