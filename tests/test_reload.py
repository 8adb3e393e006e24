"""
The graceful reload (L{manualb.service.LoadBalancer.reload}, what C{SIGHUP},
C{python -m manualb reload} and the admin API's C{POST /api/reload} do),
over real sockets on 127.0.0.1.
"""

import io
import json
import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from manualb.__main__ import main, reload as reloadCommand
from manualb.configfile import loadConfig
from manualb.service import makeService
from manualb.testing import NamedBackend, listenBackend, responseBody, serverAddress
from manualb.tlstesting import makeCA, writeCA, writeTLSFiles
from tests.test_plugin import ROOT, TWISTD, Twistd
from tests.test_shutdown import HeldBackend, _capturedLog, _messages


def _config(servers, routes=(("default", "/", "pool"),), extra="", listen=True):
    """
    The text of a configuration: upstreams C{servers} (a mapping of pool
    name to its server lines) and C{routes} (name, path, upstream).
    """
    lines = ["[manualb]"]
    if listen:
        lines.append("listen = tcp:0:interface=127.0.0.1")
    lines += ["access_log = off", extra, ""]
    for name, lines_ in servers.items():
        lines += ["[upstream %s]" % (name,), "servers ="]
        lines += ["    " + line for line in lines_]
        lines += [""]
    for name, path, upstream in routes:
        lines += ["[route %s]" % (name,), "path = " + path, "upstream = " + upstream, ""]
    return "\n".join(lines) + "\n"


class _KeepAliveClient(Protocol):
    """
    Sends requests one at a time over one connection, and gives each
    response (with a C{Content-Length}) whole.
    """

    def __init__(self):
        self.buffer = b""
        self.waiting = None
        self.lost = Deferred()

    def get(self, path: bytes) -> Deferred:
        self.waiting = Deferred()
        self.transport.write(b"GET " + path + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
        return self.waiting

    def dataReceived(self, data):
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        if len(rest) >= length:
            self.buffer = rest[length:]
            waiting, self.waiting = self.waiting, None
            waiting.callback((head, rest[:length]))

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class ServingFile:
    """
    A running service of a configuration file, and requests to it; for
    tests of reloading that file.
    """

    @inlineCallbacks
    def backend(self, resource):
        port = yield listenBackend(reactor, resource)
        self.addCleanup(port.stopListening)
        return serverAddress(port)

    def start(self, text):
        """
        Write C{text} to a file, and serve it: the service, and the port
        of its listener.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "lb.ini")
        self.write(text)
        service = makeService(loadConfig(self.path), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = []
        for child in service:
            if child.name and not child.name.startswith("admin"):
                child._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        self.service = service
        self.balancer = service.balancer
        self.port = ports[0].getHost().port
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)
        return service

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def reload(self, text):
        self.write(text)
        applied, message = self.balancer.reloadFile()
        self.assertTrue(applied, message)
        return message

    @inlineCallbacks
    def get(self, path=b"/"):
        response = yield self.agent.request(
            b"GET", b"http://127.0.0.1:%d%s" % (self.port, path)
        )
        body = yield responseBody(response)
        return response.code, body

    def ports(self):
        """
        The port of each listening service of the running service, by
        its line.
        """
        return {child.name: child.port for child in self.service if getattr(child, "port", None)}

    @inlineCallbacks
    def getAt(self, port, path=b"/"):
        response = yield self.agent.request(b"GET", b"http://127.0.0.1:%d%s" % (port, path))
        body = yield responseBody(response)
        return response.code, body


class ReloadTests(ServingFile, TestCase):
    """
    L{LoadBalancer.reloadFile} on a running service.
    """

    @inlineCallbacks
    def test_inFlightRequestCompletes(self):
        """
        A request in flight during a reload completes, even when its
        server leaves; the server gets no new request, and its connections
        close once the request is done.
        """
        held = HeldBackend()
        a = yield self.backend(held)
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        result = self.get()
        yield held.arrived()
        message = self.reload(_config({"pool": [b]}))
        self.assertIn("upstreams changed: pool", message)
        self.assertIn("1 servers leaving", message)
        for i in range(3):
            code, body = yield self.get()
            self.assertEqual((code, body), (200, b"B\n"))
        self.assertEqual(len(held.held), 1)
        [leaving] = self.balancer._leaving
        held.release()
        code, body = yield result
        self.assertEqual((code, body), (200, b"ok"))
        yield self.balancer._departures[-1] if self.balancer._departures else None
        self.assertEqual(self.balancer._leaving, [])
        self.assertEqual(leaving.connections._open, set())

    @inlineCallbacks
    def test_keepAliveClientTakesNewRoute(self):
        """
        A client connection kept alive across a reload stays open, and its
        next request takes a route the reload added.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        client = _KeepAliveClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.addCleanup(client.transport.loseConnection)
        head, body = yield client.get(b"/new")
        self.assertEqual(body, b"A\n")
        message = self.reload(
            _config(
                {"pool": [a], "other": [b]},
                routes=[("default", "/", "pool"), ("new", "/new", "other")],
            )
        )
        self.assertIn("routes added: new", message)
        self.assertIn("upstreams added: other", message)
        head, body = yield client.get(b"/new")
        self.assertEqual(body, b"B\n")
        self.assertFalse(client.lost.called)
        self.assertEqual(self.balancer.connections.open, 1)

    @inlineCallbacks
    def test_weightChange(self):
        """
        A weight changed in the file takes effect; the server is the same
        object.
        """
        a = NamedBackend("A")
        b = NamedBackend("B")
        addressA = yield self.backend(a)
        addressB = yield self.backend(b)
        self.start(_config({"pool": [addressA, addressB]}))
        before = self.balancer.pools["pool"].server(addressA)
        message = self.reload(_config({"pool": [addressA + " weight=3", addressB]}))
        self.assertIn("upstreams changed: pool", message)
        self.assertIs(self.balancer.pools["pool"].server(addressA), before)
        for i in range(8):
            yield self.get()
        self.assertEqual((len(a.requests), len(b.requests)), (6, 2))

    @inlineCallbacks
    def test_healthCarriesOver(self):
        """
        A server that stays keeps its health: one marked down stays down
        across the reload, and gets no request.
        """
        a = NamedBackend("A")
        b = NamedBackend("B")
        addressA = yield self.backend(a)
        addressB = yield self.backend(b)
        options = " max_fails=1 fail_timeout=600s"
        self.start(_config({"pool": [addressA + options, addressB + options]}))
        server = self.balancer.pools["pool"].server(addressA)
        server.health.requestFailed("test")
        self.assertFalse(server.available())
        self.reload(_config({"pool": [addressA + options, addressB + " weight=2" + options]}))
        kept = self.balancer.pools["pool"].server(addressA)
        self.assertIs(kept, server)
        self.assertFalse(kept.available())
        self.assertEqual(kept.health.state, "down")
        for i in range(4):
            yield self.get()
        self.assertEqual((len(a.requests), len(b.requests)), (0, 4))

    @inlineCallbacks
    def test_brokenFile(self):
        """
        A broken file changes nothing: one error line names the problem,
        and the old configuration keeps serving.
        """
        a = yield self.backend(NamedBackend("A"))
        self.start(_config({"pool": [a]}))
        config = self.balancer.config
        events = _capturedLog(self)
        self.write(_config({"pool": [a]}).replace("upstream = pool", "upstream = nothere"))
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn("nothere", message)
        refused = _messages(events, "Reload refused")
        self.assertEqual(refused, [message])
        self.assertEqual(_messages(events, "Reloaded"), [])
        self.assertIs(self.balancer.config, config)
        code, body = yield self.get()
        self.assertEqual((code, body), (200, b"A\n"))

    @inlineCallbacks
    def test_listenLines(self):
        """
        A reload binds a new listen line, which serves from then on; a
        removed one stops accepting, and its request in flight completes;
        one that stays keeps its port, and a client kept alive on it stays
        connected.
        """
        held = HeldBackend()
        a = yield self.backend(held)
        stays, goes, comes = (
            "tcp:0:interface=127.0.0.1",
            "tcp:0:interface=127.0.0.1:backlog=100",
            "tcp:0:interface=127.0.0.1:backlog=200",
        )
        listen = "[manualb]\nlisten =\n    %s\n    %s"
        self.start(_config({"pool": [a]}, listen=False).replace("[manualb]", listen % (stays, goes)))
        before = self.ports()
        self.assertEqual(sorted(before), sorted([stays, goes]))
        client = _KeepAliveClient()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", before[stays].getHost().port), client
        )
        self.addCleanup(client.transport.loseConnection)
        answer = client.get(b"/")
        yield held.arrived()
        held.release()
        head, body = yield answer
        self.assertEqual(body, b"ok")
        inFlight = self.getAt(before[goes].getHost().port)
        yield held.arrived()
        message = self.reload(
            _config({"pool": [a]}, listen=False).replace("[manualb]", listen % (stays, comes))
        )
        self.assertIn("listening on " + comes, message)
        self.assertIn("closing " + goes, message)
        self.assertNotIn("restart", message)
        after = self.ports()
        self.assertEqual(sorted(after), sorted([stays, comes]))
        self.assertIs(after[stays], before[stays])
        self.assertEqual(
            self.balancer.config.listeners[0].listen, (stays, comes)
        )
        refused = connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", before[goes].getHost().port), Protocol()
        )
        yield self.assertFailure(refused, ConnectionRefusedError)
        held.release()
        code, body = yield inFlight
        self.assertEqual((code, body), (200, b"ok"))
        fresh = self.getAt(after[comes].getHost().port)
        yield held.arrived()
        held.release()
        self.assertEqual((yield fresh), (200, b"ok"))
        answer = client.get(b"/")
        yield held.arrived()
        held.release()
        head, body = yield answer
        self.assertEqual(body, b"ok")
        self.assertFalse(client.lost.called)

    @inlineCallbacks
    def test_removedLineTimesOut(self):
        """
        A connection of a removed listen line still busy after
        C{shutdown_timeout} is closed then.
        """
        held = HeldBackend()
        a = yield self.backend(held)
        goes, stays = "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=100"
        text = _config({"pool": [a]}, listen=False, extra="shutdown_timeout = 0.01")
        self.start(text.replace("[manualb]", "[manualb]\nlisten = " + goes))
        client = _KeepAliveClient()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports()[goes].getHost().port), client
        )
        client.get(b"/").addErrback(lambda failure: None)
        yield held.arrived()
        self.reload(text.replace("[manualb]", "[manualb]\nlisten = " + stays))
        yield client.lost
        self.assertEqual(self.balancer._closingTimers, [])
        held.release()

    @inlineCallbacks
    def test_newListener(self):
        """
        A C{[listener NAME]} that a reload adds is bound, and serves its
        own routes.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        text = _config(
            {"pool": [a], "other": [b]},
            routes=[("default", "/", "pool"), ("api", "/api", "other")],
        )
        text += "[listener api]\nlisten = tcp:0:interface=127.0.0.1:backlog=100\nroutes = api\n"
        message = self.reload(text)
        self.assertIn("listening on tcp:0:interface=127.0.0.1:backlog=100", message)
        port = self.ports()["tcp:0:interface=127.0.0.1:backlog=100"].getHost().port
        self.assertEqual((yield self.getAt(port, b"/api")), (200, b"B\n"))
        self.assertEqual((yield self.getAt(port, b"/"))[0], 404)
        self.assertEqual((yield self.get(b"/api")), (200, b"B\n"))
        message = self.reload(_config({"pool": [a]}))
        self.assertIn("closing tcp:0:interface=127.0.0.1:backlog=100", message)
        self.assertNotIn("api", self.balancer.sites)

    @inlineCallbacks
    def test_listenerChangesKind(self):
        """
        A listener that changes from serving some routes to serving every
        one does so from its next connection, without being rebound; its
        idle keep-alive connections close, so that their clients come back
        to the new routes.  And back.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        routes = [("default", "/", "pool"), ("api", "/api", "other")]
        listener = "[listener api]\nlisten = tcp:0:interface=127.0.0.1:backlog=100\n"
        some = _config({"pool": [a], "other": [b]}, routes) + listener + "routes = api\n"
        self.start(some)
        port = self.ports()["tcp:0:interface=127.0.0.1:backlog=100"]
        number = port.getHost().port
        self.assertEqual((yield self.getAt(number, b"/"))[0], 404)
        client = _KeepAliveClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", number), client)
        head, body = yield client.get(b"/api")
        self.assertEqual(body, b"B\n")
        message = self.reload(_config({"pool": [a], "other": [b]}, routes) + listener)
        self.assertIn("listeners changed: api", message)
        self.assertNotIn("restart", message)
        yield client.lost
        self.assertIs(self.ports()["tcp:0:interface=127.0.0.1:backlog=100"], port)
        self.assertEqual((yield self.getAt(number, b"/")), (200, b"A\n"))
        self.assertEqual((yield self.getAt(number, b"/api")), (200, b"B\n"))
        self.reload(some)
        self.assertEqual((yield self.getAt(number, b"/"))[0], 404)
        self.assertEqual((yield self.get(b"/")), (200, b"A\n"))

    @inlineCallbacks
    def test_listenFails(self):
        """
        A new listen line that cannot be bound refuses the whole reload,
        with one line naming it; the old configuration keeps serving.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        taken = self.ports()["tcp:0:interface=127.0.0.1"].getHost().port
        events = _capturedLog(self)
        line = "tcp:%d:interface=127.0.0.1" % (taken,)
        accessLog = os.path.abspath(self.mktemp())
        self.write(
            _config({"pool": [b]}, listen=False)
            .replace("access_log = off", "access_log = " + accessLog)
            .replace(
                "[manualb]",
                "[manualb]\nlisten =\n    tcp:0:interface=127.0.0.1:backlog=9\n    " + line,
            )
        )
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn("cannot listen on " + line, message)
        self.assertEqual(_messages(events, "Reload refused"), [message])
        self.assertEqual(list(self.ports()), ["tcp:0:interface=127.0.0.1"])
        self.assertEqual((yield self.get()), (200, b"A\n"))
        self.assertIsNone(self.balancer.accessLog)
        self.assertIsNone(self.balancer.resource.accessLog)

    @inlineCallbacks
    def test_accessLog(self):
        """
        A reload that changes C{access_log} and C{log_format} opens the new
        file and writes the new lines there; the old file gets no more.
        """
        a = yield self.backend(NamedBackend("A"))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        first, second = os.path.join(directory, "a.log"), os.path.join(directory, "b.log")
        text = _config({"pool": [a]})
        self.start(text.replace("access_log = off", "access_log = " + first))
        self.assertEqual((yield self.get(b"/one")), (200, b"A\n"))
        message = self.reload(
            text.replace("access_log = off", "access_log = %s\nlog_format = $request $status" % (second,))
        )
        self.assertIn("access log: %s, $request $status" % (second,), message)
        self.assertNotIn("restart", message)
        self.assertEqual((yield self.get(b"/two")), (200, b"A\n"))
        with open(first, "rb") as f:
            [line] = f.read().splitlines()
        self.assertIn(b'"GET /one HTTP/1.1" 200', line)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), b"GET /two HTTP/1.1 200\n")
        self.reload(text)
        self.assertIsNone(self.balancer.accessLog)
        self.assertEqual((yield self.get(b"/three")), (200, b"A\n"))
        with open(second, "rb") as f:
            self.assertEqual(f.read(), b"GET /two HTTP/1.1 200\n")
        self.reload(text.replace("access_log = off", "access_log = " + first))
        self.assertEqual((yield self.get(b"/four")), (200, b"A\n"))
        with open(first, "rb") as f:
            self.assertIn(b'"GET /four HTTP/1.1" 200', f.read().splitlines()[-1])

    @inlineCallbacks
    def test_accessLogCannotBeOpened(self):
        """
        A new C{access_log} that cannot be opened refuses the reload with
        one line; the lines keep going to the old file.
        """
        a = yield self.backend(NamedBackend("A"))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        first = os.path.join(directory, "a.log")
        missing = os.path.join(directory, "nothere", "b.log")
        text = _config({"pool": [a]})
        self.start(text.replace("access_log = off", "access_log = " + first))
        events = _capturedLog(self)
        self.write(
            text.replace("access_log = off", "access_log = " + missing)
            + "[listener more]\nlisten = tcp:0:interface=127.0.0.1:backlog=9\n"
        )
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn("cannot open " + missing, message)
        self.assertEqual(_messages(events, "Reload refused"), [message])
        self.assertEqual(list(self.ports()), ["tcp:0:interface=127.0.0.1"])
        self.assertEqual((yield self.get(b"/one")), (200, b"A\n"))
        with open(first, "rb") as f:
            self.assertIn(b'"GET /one HTTP/1.1" 200', f.read())

    def subject(self, client):
        """
        The common name of the certificate C{client}'s server presented.
        """
        return client.transport.getPeerCertificate().get_subject().CN

    def tlsText(self, backend, certificate, key, listen="sni:0:interface=127.0.0.1"):
        return _config({"pool": [backend]}, listen=False).replace(
            "[manualb]", "[manualb]\nlisten = " + listen
        ) + "[tls]\ncertificates =\n    www.example.com %s %s\n" % (certificate, key)

    @inlineCallbacks
    def tlsClient(self, port, cafile):
        """
        A client kept alive over TLS to C{port}, trusting C{cafile}, once
        it has had its first answer.
        """
        with open(cafile, "rb") as f:
            trusted = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS("www.example.com", trustRoot=trusted),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        client = _KeepAliveClient()
        yield connectProtocol(endpoint, client)
        self.addCleanup(client.transport.loseConnection)
        head, body = yield client.get(b"/")
        self.assertEqual(body, b"A\n")
        return client

    @inlineCallbacks
    def test_certificates(self):
        """
        A reload that changes C{[tls]} gives new connections the new
        certificate, on the same port; a connection open before keeps
        working.
        """
        a = yield self.backend(NamedBackend("A"))
        directory = os.path.abspath(self.mktemp())
        ca = makeCA("manualb test CA")
        cafile = writeCA(directory, ca)
        old = writeTLSFiles(directory, ca, ["old.example.com", "www.example.com"])
        new = writeTLSFiles(directory, ca, ["new.example.com", "www.example.com"])
        self.start(self.tlsText(a, *old))
        [port] = self.ports().values()
        before = yield self.tlsClient(port.getHost().port, cafile)
        self.assertEqual(self.subject(before), "old.example.com")
        message = self.reload(self.tlsText(a, *new))
        self.assertIn("certificates: www.example.com", message)
        self.assertNotIn("restart", message)
        self.assertEqual(list(self.ports().values()), [port])
        after = yield self.tlsClient(port.getHost().port, cafile)
        self.assertEqual(self.subject(after), "new.example.com")
        head, body = yield before.get(b"/")
        self.assertEqual(body, b"A\n")
        self.assertEqual(self.subject(before), "old.example.com")
        self.assertFalse(before.lost.called)

    @inlineCallbacks
    def test_badCertificate(self):
        """
        A certificate that cannot be used refuses the reload with one
        line naming the file; the old certificate keeps serving.
        """
        a = yield self.backend(NamedBackend("A"))
        directory = os.path.abspath(self.mktemp())
        ca = makeCA("manualb test CA")
        cafile = writeCA(directory, ca)
        old = writeTLSFiles(directory, ca, ["old.example.com", "www.example.com"])
        self.start(self.tlsText(a, *old))
        [port] = self.ports().values()
        broken = os.path.join(directory, "broken.crt")
        with open(broken, "w") as f:
            f.write("not a certificate\n")
        events = _capturedLog(self)
        self.write(self.tlsText(a, broken, old[1]))
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn(broken, message)
        self.assertEqual(_messages(events, "Reload refused"), [message])
        client = yield self.tlsClient(port.getHost().port, cafile)
        self.assertEqual(self.subject(client), "old.example.com")

    @inlineCallbacks
    def test_reloadsUnderLoad(self):
        """
        Clients that send requests in a loop, on kept-alive connections,
        while several reloads happen see no failed request.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        c = yield self.backend(NamedBackend("C"))
        configs = [
            _config({"pool": [a, b]}),
            _config({"pool": [b, c + " weight=2"]}, extra="[gatekeeper]\nmax_headers = 90"),
            _config(
                {"pool": [c], "other": [a]},
                routes=[("default", "/", "pool"), ("x", "/x", "other")],
            ),
        ]
        self.start(configs[0])
        reloads = 6
        done = []
        failures = []
        answered = [0]

        @inlineCallbacks
        def client(number):
            path = b"/x" if number % 2 else b"/"
            while len(done) < reloads:
                try:
                    code, body = yield self.get(path)
                except Exception as e:
                    failures.append(repr(e))
                    continue
                if code != 200 or body not in (b"A\n", b"B\n", b"C\n"):
                    failures.append((code, body))
                answered[0] += 1
                if answered[0] % 20 == 0 and len(done) < reloads:
                    done.append(self.reload(configs[(len(done) + 1) % len(configs)]))

        yield gatherResults([client(i) for i in range(8)])
        self.assertEqual(failures, [])
        self.assertEqual(len(done), reloads)
        self.assertGreaterEqual(answered[0], reloads * 20)

    @inlineCallbacks
    def test_adminReload(self):
        """
        C{POST /api/reload} on the admin listener reloads the file and
        answers with the log line; a broken file is a 400 with the
        problem.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        admin = "admin = tcp:0:interface=127.0.0.1"
        self.start(_config({"pool": [a]}, extra=admin))
        ports = []
        for child in self.service:
            if child.name and child.name.startswith("admin"):
                child._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        url = b"http://127.0.0.1:%d/api/reload" % (ports[0].getHost().port,)
        self.write(_config({"pool": [b]}, extra=admin))
        response = yield self.agent.request(b"POST", url, Headers())
        answer = json.loads((yield responseBody(response)))
        self.assertEqual(response.code, 200)
        self.assertTrue(answer["reloaded"])
        self.assertIn("upstreams changed: pool", answer["message"])
        code, body = yield self.get()
        self.assertEqual(body, b"B\n")
        self.write("[upstream\n")
        response = yield self.agent.request(b"POST", url, Headers())
        answer = json.loads((yield responseBody(response)))
        self.assertEqual(response.code, 400)
        self.assertFalse(answer["reloaded"])
        code, body = yield self.get()
        self.assertEqual(body, b"B\n")


class ReloadCommandTests(TestCase):
    def test_noPidfile(self):
        """
        C{python -m manualb reload} with a pid file that cannot be read
        says so, with status 1.
        """
        err = io.StringIO()
        self.assertEqual(reloadCommand(self.mktemp(), err), 1)
        self.assertIn("cannot read the pid", err.getvalue())


class _ReloadingTwistd(Twistd):
    """
    Also fires C{reloaded} once the process logs a reload.
    """

    def __init__(self):
        super().__init__()
        self.reloaded = Deferred()

    def outReceived(self, data):
        super().outReceived(data)
        if b"Reloaded " in self.output and not self.reloaded.called:
            self.reloaded.callback(None)

    errReceived = outReceived


class TwistdReloadTests(TestCase):
    @inlineCallbacks
    def test_sighupReloads(self):
        """
        C{python -m manualb reload --pidfile FILE} sends C{SIGHUP} to
        C{twistd -n manualb}, which reads its edited file: a new route
        answers, and the process keeps running.
        """
        a = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(a.stopListening)
        b = yield listenBackend(reactor, NamedBackend("B"))
        self.addCleanup(b.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "lb.ini")
        pidfile = os.path.join(directory, "twistd.pid")
        with open(config, "w") as f:
            f.write(_config({"pool": [serverAddress(a)]}))
        process = _ReloadingTwistd()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=" + pidfile, "manualb", "--config", config],
            env=dict(os.environ),
            path=ROOT,
        )
        try:
            port = yield process.ready
            agent = Agent(reactor)
            # An answer means the reactor runs, so that its SIGHUP handler
            # (installed when it starts) is in place.
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % (port,))
            self.assertEqual((yield responseBody(response)), b"A\n")
            with open(config, "w") as f:
                f.write(
                    _config(
                        {"pool": [serverAddress(a)], "other": [serverAddress(b)]},
                        routes=[("default", "/", "pool"), ("new", "/new", "other")],
                    )
                )
            self.assertEqual(main(["reload", "--pidfile", pidfile]), 0)
            yield process.reloaded
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/new" % (port,))
            self.assertEqual((yield responseBody(response)), b"B\n")
            self.assertFalse(process.ended.called)
            transport.signalProcess(signal.SIGTERM)
        except BaseException:
            if not process.ended.called:
                transport.signalProcess(signal.SIGKILL)
            raise
        status = yield process.ended
        self.assertEqual(status, (0, None), process.output)
        self.assertIn(b"routes added: new", process.output)
