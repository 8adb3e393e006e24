"""
What a reload changes besides routes and pools: the kind of a listener
(redirecting to https or not), the C{[stream]} sections, the admin API, a
listen line moving between listeners, stages an embedder added; and that a
WebSocket tunnel outlives it.  Over real sockets on 127.0.0.1.
"""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer

from manualb.interfaces import IStage
from manualb.testing import NamedBackend, responseBody
from manualb.tlstesting import makeCA, writeTLSFiles
from manualb.urlmap import URLMap
from manualb.view import Answer
from tests.test_reload import ServingFile, _config
from tests.test_websocket import EchoWebSocket, WebSocketClient


class _Greeter(Protocol):
    """
    A TCP server that says its name, then echoes what it gets.
    """

    def connectionMade(self):
        self.transport.write(self.factory.name + b"\n")

    def dataReceived(self, data):
        self.transport.write(data)


class _Reader(Protocol):
    """
    A TCP client that keeps what it gets; C{nextData} fires with the next
    bytes, C{lost} once the connection is closed.
    """

    def __init__(self):
        self.received = b""
        self.waiting = None
        self.lost = Deferred()

    def nextData(self):
        self.waiting = Deferred()
        if self.received:
            self._give()
        return self.waiting

    def _give(self):
        waiting, self.waiting = self.waiting, None
        data, self.received = self.received, b""
        waiting.callback(data)

    def dataReceived(self, data):
        self.received += data
        if self.waiting is not None:
            self._give()

    def connectionLost(self, reason=None):
        self.lost.callback(None)


@implementer(IStage)
class _Teapot:
    """
    An embedder's stage: answers C{/teapot} with a 418.
    """

    def handle(self, passage):
        if passage.view.path == b"/teapot":
            return Answer(418, b"I'm a teapot", b"short and stout\n")
        return None


class ReloadLinesTests(ServingFile, TestCase):
    """
    L{LoadBalancer.reloadFile} applies every section that listens.
    """

    @inlineCallbacks
    def greeter(self, name):
        factory = Factory.forProtocol(_Greeter)
        factory.name = name
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return "127.0.0.1:%d" % (port.getHost().port,)

    @inlineCallbacks
    def connect(self, port, host="127.0.0.2"):
        client = _Reader()
        yield connectProtocol(TCP4ClientEndpoint(reactor, host, port), client)
        self.addCleanup(client.transport.abortConnection)
        return client

    def freePort(self):
        """
        A port of 127.0.0.1 that was free a moment ago, for a line that
        must keep its port across a reload.
        """
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    @inlineCallbacks
    def test_redirectHTTPS(self):
        """
        Turning C{redirect_https} on makes the plain line of the listener
        answer with a redirect from its next connection, without a rebind;
        turning it off again serves the routes there.
        """
        a = yield self.backend(NamedBackend("A"))
        directory = os.path.abspath(self.mktemp())
        certificate, key = writeTLSFiles(directory, makeCA("CA"), ["www.example.com"])
        text = _config({"pool": [a]}).replace(
            "listen = tcp:0:interface=127.0.0.1",
            "listen =\n    tcp:0:interface=127.0.0.1\n    sni:0:interface=127.0.0.1",
        ) + "[tls]\ncertificates = www.example.com %s %s\n" % (certificate, key)
        self.start(text)
        plain = self.ports()["tcp:0:interface=127.0.0.1"]
        self.assertEqual((yield self.get()), (200, b"A\n"))
        message = self.reload(text.replace("access_log = off", "access_log = off\nredirect_https = on"))
        self.assertNotIn("restart", message)
        self.assertIs(self.ports()["tcp:0:interface=127.0.0.1"], plain)
        self.assertEqual((yield self.get())[0], 301)
        self.reload(text)
        self.assertEqual((yield self.get()), (200, b"A\n"))

    @inlineCallbacks
    def test_streams(self):
        """
        A C{[stream]} added by a reload listens at once; one whose upstream
        changes joins its next connections to the new servers, on the same
        port; one removed stops accepting, and the tunnels it has close
        after C{shutdown_timeout}.
        """
        a = yield self.backend(NamedBackend("A"))
        one = yield self.greeter(b"one")
        two = yield self.greeter(b"two")
        base = _config({"pool": [a], "t1": [one], "t2": [two]}, extra="shutdown_timeout = 0.1s")
        stream = "[stream s]\nlisten = tcp:0:interface=127.0.0.2\nupstream = %s\n"
        self.start(base)
        message = self.reload(base + stream % ("t1",))
        self.assertIn("streams added: s", message)
        self.assertNotIn("restart", message)
        port = self.ports()["tcp:0:interface=127.0.0.2"]
        first = yield self.connect(port.getHost().port)
        self.assertEqual((yield first.nextData()), b"one\n")
        self.reload(base + stream % ("t2",))
        self.assertIs(self.ports()["tcp:0:interface=127.0.0.2"], port)
        second = yield self.connect(port.getHost().port)
        self.assertEqual((yield second.nextData()), b"two\n")
        first.transport.write(b"still here")
        self.assertEqual((yield first.nextData()), b"still here")
        message = self.reload(base)
        self.assertIn("streams removed: s", message)
        self.assertNotIn("tcp:0:interface=127.0.0.2", self.ports())
        yield self.assertFailure(self.connect(port.getHost().port), ConnectionRefusedError)
        yield first.lost
        yield second.lost

    @inlineCallbacks
    def adminGet(self, port, path=b"/api/status", token=None):
        headers = Headers()
        if token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + token)
        response = yield self.agent.request(
            b"GET", b"http://127.0.0.1:%d%s" % (port, path), headers
        )
        body = yield responseBody(response)
        return response.code, body

    @inlineCallbacks
    def test_admin(self):
        """
        A reload starts the admin API, reads its token again, keeps as
        many decision records as C{explain_records} says, and ends it.
        """
        a = yield self.backend(NamedBackend("A"))
        base = _config({"pool": [a]})
        self.start(base)
        admin = "admin = tcp:0:interface=127.0.0.1"
        message = self.reload(_config({"pool": [a]}, extra=admin))
        self.assertIn("admin API: tcp:0:interface=127.0.0.1", message)
        port = self.ports()["admin tcp:0:interface=127.0.0.1"].getHost().port
        self.assertEqual((yield self.get()), (200, b"A\n"))
        code, body = yield self.adminGet(port)
        self.assertEqual(code, 200)
        self.assertIn("pool", json.loads(body)["upstreams"])
        self.assertEqual(len(self.balancer.recent.entries), 1)
        tokenFile = os.path.join(os.path.dirname(self.path), "token")
        with open(tokenFile, "w") as f:
            f.write("sesame\n")
        self.reload(
            _config({"pool": [a]}, extra="%s\nadmin_token_file = %s\nexplain_records = 5" % (admin, tokenFile))
        )
        self.assertEqual((yield self.adminGet(port))[0], 401)
        self.assertEqual((yield self.adminGet(port, token=b"sesame"))[0], 200)
        self.assertEqual(self.balancer.recent.entries.maxlen, 5)
        self.assertEqual(len(self.balancer.recent.entries), 1)
        self.reload(base)
        self.assertIsNone(self.balancer.admin)
        self.assertIsNone(self.balancer.resource.recent)
        yield self.assertFailure(self.connect(port, "127.0.0.1"), ConnectionRefusedError)
        self.assertEqual((yield self.get()), (200, b"A\n"))

    @inlineCallbacks
    def test_lineMovesToAnotherListener(self):
        """
        A listen line on a fixed port that moves from one listener to
        another keeps its socket and serves the routes of its new listener.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        fixed = "tcp:%d:interface=127.0.0.1" % (self.freePort(),)
        routes = [("default", "/", "pool"), ("api", "/api", "other")]
        servers = {"pool": [a], "other": [b]}
        self.start(
            _config(servers, routes).replace("tcp:0:interface=127.0.0.1", fixed)
            + "[listener api]\nlisten = tcp:0:interface=127.0.0.2\nroutes = api\n"
        )
        port = self.ports()[fixed]
        number = port.getHost().port
        self.assertEqual((yield self.getAt(number, b"/")), (200, b"A\n"))
        message = self.reload(
            _config(servers, routes) + "[listener api]\nlisten = %s\nroutes = api\n" % (fixed,)
        )
        self.assertNotIn("listening on " + fixed, message)
        self.assertIs(self.ports()[fixed], port)
        self.assertEqual((yield self.getAt(number, b"/"))[0], 404)
        self.assertEqual((yield self.getAt(number, b"/api")), (200, b"B\n"))

    @inlineCallbacks
    def test_addedStageKept(self):
        """
        A stage an embedder put in a site's chain keeps its place there
        across a reload.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        stages = self.balancer.resource.stages
        teapot = _Teapot()
        stages.insert(len(stages) - 1, teapot)
        self.assertEqual((yield self.get(b"/teapot"))[0], 418)
        self.reload(_config({"pool": [b]}, extra="[gatekeeper]\nclient_max_body_size = 1k"))
        stages = self.balancer.resource.stages
        self.assertIs(stages[-2], teapot)
        self.assertIsInstance(stages[-1], URLMap)
        self.assertEqual((yield self.get(b"/teapot"))[0], 418)
        self.assertEqual((yield self.get(b"/")), (200, b"B\n"))

    @inlineCallbacks
    def test_webSocketSurvives(self):
        """
        A WebSocket tunnel open through manualb goes on across reloads,
        even one that removes its server from the pool.
        """
        factory = Factory.forProtocol(EchoWebSocket)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        echo = "127.0.0.1:%d" % (port.getHost().port,)
        a = yield self.backend(NamedBackend("A"))
        self.start(_config({"pool": [echo]}))
        client = WebSocketClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.addCleanup(client.transport.abortConnection)
        client.send(1, b"before")
        self.assertEqual((yield client.nextMessage()), (1, b"before"))
        self.reload(_config({"pool": [echo]}, extra="shutdown_timeout = 0.1s"))
        client.send(1, b"between")
        self.assertEqual((yield client.nextMessage()), (1, b"between"))
        message = self.reload(_config({"pool": [a]}))
        self.assertIn("servers leaving", message)
        client.send(1, b"after")
        self.assertEqual((yield client.nextMessage()), (1, b"after"))
        self.assertFalse(client.closed.called)
        self.assertEqual((yield self.get()), (200, b"A\n"))
        client.send(8, b"")
        yield client.closed

    @inlineCallbacks
    def test_adminRefused(self):
        """
        A reload whose admin listener cannot be bound, or whose token
        cannot be read, is refused, naming it; nothing changed.
        """
        a = yield self.backend(NamedBackend("A"))
        b = yield self.backend(NamedBackend("B"))
        self.start(_config({"pool": [a]}))
        taken = "tcp:%d:interface=127.0.0.1" % (self.port,)
        self.write(_config({"pool": [b]}, extra="admin = " + taken))
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn("[manualb] admin: cannot listen on " + taken, message)
        missing = os.path.join(os.path.dirname(self.path), "missing")
        self.write(
            _config(
                {"pool": [b]},
                extra="admin = tcp:0:interface=127.0.0.1\nadmin_token_file = " + missing,
            )
        )
        applied, message = self.balancer.reloadFile()
        self.assertFalse(applied)
        self.assertIn("admin_token_file", message)
        self.assertEqual(list(self.ports()), ["tcp:0:interface=127.0.0.1"])
        self.assertIsNone(self.balancer.admin)
        self.assertEqual((yield self.get()), (200, b"A\n"))

    @inlineCallbacks
    def test_frontEnd(self):
        """
        A reload that changes C{front_end} serves the next connections of
        the same socket with the new front end.
        """
        from manualb.front import LeanFactory
        from manualb.web import ProxySite

        a = yield self.backend(NamedBackend("A"))
        self.start(_config({"pool": [a]}, extra="front_end = twisted"))
        [service] = [child for child in self.service if child.name == "tcp:0:interface=127.0.0.1"]
        self.assertIsInstance(service.serving, ProxySite)
        self.assertEqual((yield self.get()), (200, b"A\n"))
        self.reload(_config({"pool": [a]}, extra="front_end = lean"))
        self.assertIsInstance(service.serving, LeanFactory)
        self.assertEqual((yield self.get()), (200, b"A\n"))
        self.reload(_config({"pool": [a]}, extra="front_end = lean\n[gatekeeper]\nmax_headers = 50"))
        self.assertIsInstance(service.serving, LeanFactory)
