"""
End-to-end tests of C{workers = 2}: C{twistd -n manualb} as a supervisor
of two worker processes, over real sockets on the loopback interface.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from manualb.testing import NamedBackend, listenBackend, serverAddress
from manualb.tlstesting import makeCA, writeCA, writeTLSFiles
from tests.test_plugin import ROOT, TWISTD
from tests.test_shutdown import HeldBackend, RawClient

#: The longest wait for any event of a test.
DEADLINE = 60.0


class Supervised(ProcessProtocol):
    """
    C{twistd -n manualb} with workers: its output, and waits for lines of
    it.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()
        self.status = None
        self._waiting: list[tuple[re.Pattern, int, Deferred]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        for waiting in list(self._waiting):
            pattern, count, d = waiting
            found = pattern.findall(self.output)
            if len(found) >= count:
                self._waiting.remove(waiting)
                d.callback(found)

    def waitFor(self, pattern: bytes, count: int = 1) -> Deferred:
        """
        Fires with every match of C{pattern} in the output once there are
        C{count}; fails after L{DEADLINE} seconds.
        """
        compiled = re.compile(pattern)
        d: Deferred = Deferred()
        self._waiting.append((compiled, count, d))
        self.childDataReceived(-1, b"")
        return d.addTimeout(DEADLINE, reactor)

    def pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(rb"worker \d+ started, pid (\d+)", self.output)}

    def endedPids(self) -> set[int]:
        return {
            int(pid) for pid in re.findall(rb"worker \d+ \(pid (\d+)\) (?:exited|killed)", self.output)
        }

    def processEnded(self, reason) -> None:
        value = reason.value
        status = 0 if isinstance(value, ProcessDone) else (value.exitCode, value.signal)
        self.ended.callback(status)


class WorkersTestCase(TestCase):
    #: More listen lines, each indented on a line of its own.
    listen = ""

    @inlineCallbacks
    def start(self, servers: list[str], workers: int = 2, extra: str = ""):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.config = os.path.join(directory, "lb.ini")
        self.writeConfig(servers, workers, extra)
        self.process = process = Supervised()
        self.transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=", "manualb", "--config", self.config],
            env=dict(os.environ),
            path=ROOT,
        )
        self.addCleanup(self.killAll)
        [listening] = yield process.waitFor(
            rb"supervisor: tcp:0:interface=127\.0\.0\.1 listening at 127\.0\.0\.1:(\d+)"
        )
        [admin] = yield process.waitFor(rb"admin API listening at 127\.0\.0\.1:(\d+)")
        yield process.waitFor(rb"worker \d+ \(pid \d+\) ready", workers)
        self.port, self.adminPort = int(listening), int(admin)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def writeConfig(self, servers: list[str], workers: int = 2, extra: str = "") -> None:
        with open(self.config, "w") as f:
            f.write(
                "[manualb]\nlisten = tcp:0:interface=127.0.0.1\n%sworkers = %d\n"
                "admin = tcp:0:interface=127.0.0.1\naccess_log = off\nshutdown_timeout = 20s\n%s"
                "[upstream pool]\nservers = %s\n"
                "[route default]\npath = /\nupstream = pool\n"
                % (self.listen, workers, extra, " ".join(servers))
            )

    @inlineCallbacks
    def killAll(self):
        """
        Stop what the test started and has not ended: gracefully first, so
        that the workers close their connections to the test's backends,
        then by force after L{DEADLINE} seconds, the workers too.
        """
        if not self.process.ended.called:
            self.transport.signalProcess("TERM")
            try:
                yield self.process.ended.addTimeout(DEADLINE, reactor)
            except Exception:
                self.transport.signalProcess("KILL")
        for pid in self.process.pids() - self.process.endedPids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    @inlineCallbacks
    def get(self, path: bytes = b"/", port: int | None = None):
        """
        One request on a fresh connection (no retry): its status and body.
        """
        agent = Agent(reactor, pool=self.pool)
        url = b"http://127.0.0.1:%d%s" % (port or self.port, path)
        response = yield agent.request(b"GET", url).addTimeout(DEADLINE, reactor)
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def status(self):
        code, body = yield self.get(b"/api/status", self.adminPort)
        self.assertEqual(code, 200, body)
        return json.loads(body)

    @inlineCallbacks
    def servedByBoth(self, expected: bytes = b"A\n"):
        """
        Send batches of concurrent requests until the admin API shows that
        each worker served some; every answer must be C{expected}.
        """
        sent = 0
        while sent < 2000:
            answers = yield gatherResults([self.get() for _ in range(20)])
            sent += len(answers)
            self.assertEqual(set(answers), {(200, expected)})
            status = yield self.status()
            counts = [worker.get("requests", 0) for worker in status["workers"]]
            if len(counts) == 2 and all(counts):
                return sent, status
        self.fail("one worker served every request: %r" % (counts,))


class WorkersTests(WorkersTestCase):
    @inlineCallbacks
    def test_bothServeAndTheWholeIsShown(self):
        """
        Requests are served by both workers; C{/api/status} shows each
        worker's share and their sum for the server, C{/metrics} the sum.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        yield self.start([serverAddress(a)])
        sent, status = yield self.servedByBoth()
        [server] = status["upstreams"]["pool"]["servers"]
        self.assertEqual(server["requests"], sent)
        self.assertEqual(sum(w["requests"] for w in status["workers"]), sent)
        self.assertEqual({w["state"] for w in status["workers"]}, {"running"})
        code, metrics = yield self.get(b"/metrics", self.adminPort)
        self.assertEqual(code, 200)
        counted = re.findall(rb'manualb_requests_total\{[^}]*status="2xx"[^}]*\} (\S+)', metrics)
        self.assertEqual(sum(float(n) for n in counted), sent, metrics)
        code, page = yield self.get(b"/", self.adminPort)
        self.assertEqual(code, 200)
        self.assertIn(b"<html", page.lower())

    @inlineCallbacks
    def test_killedWorkerRestarted(self):
        """
        A worker killed is restarted; no request fails meanwhile, nor
        after, and both workers serve again.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        yield self.start([serverAddress(a)])
        status = yield self.status()
        victim = status["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        restarted = self.process.waitFor(rb"worker 1 \(pid \d+\) ready", 2)
        answers = []
        while not restarted.called:
            answers.append((yield self.get()))
        yield restarted
        self.assertIn(b"worker 1 (pid %d) killed by SIGKILL" % (victim,), self.process.output)
        self.assertEqual(set(answers), {(200, b"A\n")})
        answers = yield gatherResults([self.get() for _ in range(40)])
        self.assertEqual(set(answers), {(200, b"A\n")})
        status = yield self.status()
        pids = {w["pid"] for w in status["workers"]}
        self.assertNotIn(victim, pids)
        self.assertEqual(status["workers"][0]["restarts"], 1)
        yield self.servedByBoth()

    @inlineCallbacks
    def test_sighupReloadsEveryWorker(self):
        """
        C{SIGHUP} to the supervisor makes each worker read the edited file:
        both then send every request to the new server.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        b = yield listenBackend(reactor, NamedBackend("B"))
        self.addCleanup(b.stopListening)
        yield self.start([serverAddress(a)])
        self.writeConfig([serverAddress(b)])
        self.transport.signalProcess("HUP")
        yield self.process.waitFor(rb"\[worker \d+ pid \d+\] Reloaded", 2)
        answers = yield gatherResults([self.get() for _ in range(40)])
        self.assertEqual(set(answers), {(200, b"B\n")})
        status = yield self.status()
        for worker in status["workers"]:
            [server] = worker["status"]["upstreams"]["pool"]["servers"]
            self.assertEqual(server["server"], serverAddress(b))

    @inlineCallbacks
    def test_newListenLineReplacesWorkers(self):
        """
        A reload that adds a listen line binds it in the supervisor and
        replaces the workers: the new ones serve both lines, the old ones
        exit cleanly, and the old line keeps its socket.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        yield self.start([serverAddress(a)])
        old = self.process.pids()
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace(
                "listen = tcp:0:interface=127.0.0.1\n",
                "listen = tcp:0:interface=127.0.0.1\n    tcp:0:interface=127.0.0.1:backlog=64\n",
            ))
        self.transport.signalProcess("HUP")
        found = yield self.process.waitFor(rb"backlog=64 listening at 127\.0\.0\.1:(\d+)")
        yield self.process.waitFor(rb"worker \d+ \(pid \d+\) exited with status 0", 2)
        self.assertEqual(self.process.endedPids(), old)
        newPort = int(found[0])
        for port in (self.port, newPort):
            answers = yield gatherResults([self.get(port=port) for _ in range(10)])
            self.assertEqual(set(answers), {(200, b"A\n")})
        status = yield self.status()
        self.assertEqual([w["generation"] for w in status["workers"]], [2, 2])

    @inlineCallbacks
    def test_sigtermStopsAllGracefully(self):
        """
        C{SIGTERM} to the supervisor stops both workers gracefully: a
        request in flight gets its whole answer, and the supervisor exits
        with status 0 once they have.
        """
        backend = HeldBackend()
        port = yield listenBackend(reactor, backend)
        self.addCleanup(port.stopListening)
        yield self.start([serverAddress(port)])
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield backend.arrived().addTimeout(DEADLINE, reactor)
        self.transport.signalProcess("TERM")
        yield self.process.waitFor(rb"Stopping: waiting up to 20.0s \(shutdown_timeout\) for 1 requests")
        self.assertFalse(self.process.ended.called)
        backend.release()
        data = yield client.lost
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertTrue(data.endswith(b"\r\n\r\nok"), data)
        status = yield self.process.ended
        self.assertEqual(status, 0, self.process.output)
        self.assertEqual(self.process.endedPids(), self.process.pids())
        self.assertEqual(len(re.findall(rb"exited with status 0", self.process.output)), 2)


class TLSWorkersTests(WorkersTestCase):
    @inlineCallbacks
    def test_sslAndSni(self):
        """
        The workers do the TLS of C{ssl:} and C{sni:} lines on the plain
        sockets the supervisor bound, with the certificates of each.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        directory = os.path.abspath(self.mktemp())
        ca = makeCA("manualb test CA")
        cafile = writeCA(directory, ca)
        certificate, key = writeTLSFiles(directory, ca, ["www.example.com"])
        self.listen = (
            "    sni:0:interface=127.0.0.1\n"
            "    ssl:0:privateKey=%s:certKey=%s:interface=127.0.0.1\n" % (key, certificate)
        )
        yield self.start(
            [serverAddress(a)],
            extra="[tls]\ncertificates =\n    www.example.com %s %s\n" % (certificate, key),
        )
        ports = yield self.process.waitFor(rb"(?:sni|ssl):0:\S* listening at 127\.0\.0\.1:(\d+)", 2)
        with open(cafile, "rb") as f:
            trusted = Certificate.loadPEM(f.read())
        for port in ports:
            for _ in range(4):
                client = RawClient(
                    b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
                )
                endpoint = wrapClientTLS(
                    optionsForClientTLS("www.example.com", trustRoot=trusted),
                    TCP4ClientEndpoint(reactor, "127.0.0.1", int(port)),
                )
                yield connectProtocol(endpoint, client)
                data = yield client.lost.addTimeout(DEADLINE, reactor)
                self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
                self.assertTrue(data.endswith(b"\r\n\r\nA\n"), data)
