"""
WebSocket (and any HTTP/1.1 Upgrade) through the HTTP proxy: in memory, then
over real sockets with a real WebSocket echo backend.
"""

import base64

import attrs
import hashlib
import os
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
import twisted.test
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.ssl import CertificateOptions
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel

from manualb.front import HTTP1Connection
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, balancerConfig

from .test_proxy import headOf

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\n"
    b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade, X-Secret\r\n"
    b"X-Secret: 1\r\nKeep-Alive: 300\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nKeep-Alive: timeout=5\r\nServer: backend\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class MemoryUpgradeTests(SynchronousTestCase):
    """
    Upgrades driven in memory.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001", "10.0.0.2:8002"]))
        self.pool = self.lb.balancer.pools["backends"]

    def switch(self, client=None):
        """
        An upgrade request, its 101 and the tunnel: returns the client and the
        backend peers, with what they had received cleared.
        """
        client = client or self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        backend.received()
        backend.send(SWITCH)
        client.received()
        return client, backend

    def test_upgradeRequestReachesBackend(self):
        """
        The backend gets the request with its Upgrade and Connection: upgrade,
        and the WebSocket headers; the other hop-by-hop headers, and those
        Connection names, are still removed.
        """
        client = self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(line, b"GET /chat HTTP/1.1")
        self.assertEqual(headers[b"upgrade"], [b"websocket"])
        self.assertEqual(headers[b"connection"], [b"upgrade"])
        self.assertEqual(headers[b"sec-websocket-key"], [b"dGhlIHNhbXBsZSBub25jZQ=="])
        self.assertEqual(headers[b"sec-websocket-version"], [b"13"])
        self.assertNotIn(b"x-secret", headers)
        self.assertNotIn(b"keep-alive", headers)
        self.assertNotIn(b"content-length", headers)
        self.assertEqual(headers[b"via"], [b"1.1 manualb"])

    def test_upgradeNeedsConnectionUpgrade(self):
        """
        Upgrade without C{Connection: upgrade} is no upgrade: stripped as
        before.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertNotIn(b"upgrade", headers)
        self.assertNotIn(b"connection", headers)

    def test_http10ClientNotUpgraded(self):
        """
        An HTTP/1.0 client cannot upgrade (RFC 9110, 7.8): its Upgrade does
        not go on.
        """
        client = self.lb.client()
        client.send(UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertNotIn(b"upgrade", headers)
        self.assertNotIn(b"connection", headers)

    def test_requestWithBodyNotUpgraded(self):
        """
        A request with a body is proxied as an ordinary one.
        """
        client = self.lb.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertNotIn(b"upgrade", headers)

    def test_switchingProtocols(self):
        """
        The backend's 101 goes to the client with its Upgrade, Connection and
        WebSocket headers (other hop-by-hop ones removed, manualb's Server),
        and no chunked framing; bytes the backend sent right after it follow.
        """
        client = self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        backend.send(SWITCH + b"\x81\x02hi")
        response = client.received()
        head, rest = response.split(b"\r\n\r\n", 1)
        line, headers = headOf(response)
        self.assertEqual(line, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(headers[b"upgrade"], [b"websocket"])
        self.assertEqual(headers[b"connection"], [b"Upgrade"])
        self.assertEqual(headers[b"sec-websocket-accept"], [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="])
        self.assertEqual(headers[b"server"][0][:8], b"manualb/")
        self.assertNotIn(b"keep-alive", headers)
        self.assertNotIn(b"transfer-encoding", headers)
        self.assertEqual(rest, b"\x81\x02hi")
        self.assertTrue(self.pool.servers[0].connections._open)

    def test_bytesFlowBothWays(self):
        """
        Once switched, whatever either side sends reaches the other as it is,
        for as long as the tunnel lasts (no HTTP parsing either way).
        """
        client, backend = self.switch()
        client.send(b"\x81\x85\x00\x00\x00\x00hello")
        self.assertEqual(backend.received(), b"\x81\x85\x00\x00\x00\x00hello")
        backend.send(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(client.received(), b"HTTP/1.1 200 OK\r\n\r\n")
        client.send(GET)
        self.assertEqual(backend.received(), GET)
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_clientDataSentBeforeTheSwitch(self):
        """
        What the client sent after its request, before the 101, reaches the
        backend once switched.
        """
        client = self.lb.client()
        client.send(UPGRADE + b"early")
        backend = self.lb.acceptConnection()
        backend.received()
        backend.send(SWITCH)
        self.assertEqual(backend.received(), b"early")

    def test_clientCloseClosesBackend(self):
        client, backend = self.switch()
        client.close()
        self.assertFalse(backend.connected)

    def test_clientResetClosesBackend(self):
        client, backend = self.switch()
        client.reset()
        self.assertFalse(backend.connected)

    def test_backendCloseClosesClient(self):
        client, backend = self.switch()
        backend.send(b"bye")
        backend.close()
        self.assertEqual(client.received(), b"bye")
        self.assertFalse(client.connected)

    def test_backendResetClosesClient(self):
        client, backend = self.switch()
        backend.reset()
        self.assertFalse(client.connected)

    def test_shutdownClosesTunnels(self):
        """
        Closing the balancer ends its tunnels, client side included.
        """
        client, backend = self.switch()
        self.lb.balancer.close()
        self.assertFalse(client.connected)
        self.assertFalse(backend.connected)

    def test_clientTimeoutDoesNotApply(self):
        """
        The HTTP channel's idle timeout (client_timeout, 60 s here) does not
        close a tunnel; the tunnel's own does, after an hour without a byte
        either way.
        """
        client, backend = self.switch()
        self.lb.reactor.advance(600)
        self.assertTrue(client.connected)
        self.assertTrue(backend.connected)
        self.lb.reactor.advance(3000)
        self.assertFalse(client.connected)
        self.assertFalse(backend.connected)

    def test_tunnelTimeout(self):
        """
        Traffic either way keeps the tunnel open; tunnel_timeout without any
        closes both sides.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"], tunnel_timeout="10s"))
        client, backend = self.switch()
        self.lb.reactor.advance(8)
        client.send(b"ping")
        self.lb.reactor.advance(8)
        backend.send(b"pong")
        self.lb.reactor.advance(8)
        self.assertTrue(client.connected)
        self.lb.reactor.advance(2)
        self.assertFalse(client.connected)
        self.assertFalse(backend.connected)

    def test_backPressure(self):
        """
        A client that cannot take more pauses reading from the backend, and
        the other way round.
        """
        client, backend = self.switch()
        client.transport.producer.pauseProducing()
        self.assertEqual(backend.transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(backend.transport.producerState, "producing")
        backend.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        backend.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_nonSwitchingAnswer(self):
        """
        Any other answer is an ordinary response, after which the backend
        connection is closed, not reused; the client's stays usable.
        """
        client = self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        backend.send(
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"
        )
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nnope"))
        self.assertFalse(backend.connected)
        self.assertTrue(client.connected)
        self.assertEqual(self.pool.servers[0].active, 0)
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.2", 8002)])

    def test_unaskedSwitchIsBadResponse(self):
        """
        A 101 to a request that asked for no upgrade is still a bad response.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(SWITCH)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertFalse(backend.connected)

    def test_activeHeldAndLoggedWhenClosed(self):
        """
        The tunnel counts as a request in flight to its server until it
        closes; its access log line is written then, with status 101 and
        the bytes sent to the client through the tunnel.
        """
        client, backend = self.switch()
        server = self.pool.servers[0]
        self.assertEqual(server.active, 1)
        backend.send(b"x" * 10)
        self.lb.reactor.advance(5)
        self.assertEqual(self.lb.accessLog.getvalue(), b"")
        client.close()
        self.assertEqual(server.active, 0)
        self.assertRegex(
            self.lb.accessLog.getvalue(),
            rb'"GET /chat HTTP/1\.1" 101 10 "-" "-" 10\.0\.0\.1:8001 5\.000\n$',
        )

    def test_leastConnSeesTunnels(self):
        """
        least_conn sends new requests away from a server busy with a tunnel.
        """
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001", "10.0.0.2:8002"], balance="least_conn")
        )
        self.switch()
        client = self.lb.client(port=2)
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.2", 8002)])

    def test_switchIsSuccessForPassiveHealth(self):
        """
        A server on trial after a failure comes back with a 101.
        """
        # A backup: the only server of a pool is never marked down.
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001", "10.0.0.2:8002 backup"], tries="1")
        )
        server = self.lb.balancer.pools["backends"].servers[0]
        client = self.lb.client()
        client.send(GET)
        self.lb.refuseConnection()
        client.received()
        self.assertEqual(server.health.state, "down")
        self.lb.reactor.advance(11)
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        backend.send(SWITCH)
        self.assertEqual(server.health.state, "up")

    def test_withoutTwistedsHook(self):
        """
        A Twisted without the channel's upgrade hook cannot hand the
        connection over: the request goes on as an ordinary one, without
        its Upgrade.
        """
        self.patch(HTTPChannel, "_protocolUpgradeForWebsockets", None)
        self.lb = MemoryBalancer(
            attrs.evolve(balancerConfig(["10.0.0.1:8001"]), front_end="twisted")
        )
        client = self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertNotIn(b"upgrade", headers)
        self.assertNotIn(b"connection", headers)
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_takeOverFails(self):
        """
        Should the hand-over fail, both connections are dropped, the server
        is let go, and the request is logged as a 502.
        """

        def broken(self, protocol):
            raise RuntimeError("no")

        self.patch(HTTPChannel, "_protocolUpgradeForWebsockets", broken)
        self.patch(HTTP1Connection, "_takeOver", lambda self, request, protocol: broken(self, protocol))
        client = self.lb.client()
        client.send(UPGRADE)
        backend = self.lb.acceptConnection()
        backend.send(SWITCH)
        self.assertFalse(client.connected)
        self.assertFalse(backend.connected)
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertIn(b'" 502 ', self.lb.accessLog.getvalue())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_retriedOnAnotherServer(self):
        """
        An upgrade request whose first server refuses goes to the next.
        """
        client = self.lb.client()
        client.send(UPGRADE)
        self.lb.refuseConnection()
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(headers[b"upgrade"], [b"websocket"])
        backend.send(SWITCH)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 101 "))


# A minimal WebSocket (RFC 6455) for the end-to-end test.

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def acceptKey(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """
    One final frame; masked when C{mask} is given (client to server).
    """
    length = len(payload)
    maskBit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, maskBit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, maskBit | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, maskBit | 127, length)
    if mask is None:
        return head + payload
    return head + mask + _unmask(mask, payload)


def _unmask(mask: bytes, payload: bytes) -> bytes:
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def parseFrame(buffer: bytes):
    """
    The first whole frame of C{buffer} as C{(opcode, payload, rest)}, or
    L{None} while it is incomplete.
    """
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    length = second & 0x7F
    offset = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack("!H", buffer[2:4])
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,) = struct.unpack("!Q", buffer[2:10])
        offset = 10
    mask = None
    if second & 0x80:
        mask = buffer[offset : offset + 4]
        offset += 4
    if len(buffer) < offset + length:
        return None
    payload = buffer[offset : offset + length]
    if mask is not None:
        payload = _unmask(mask, payload)
    return first & 0x0F, payload, buffer[offset + length :]


class EchoWebSocket(Protocol):
    """
    A WebSocket server that echoes every message: reads the handshake,
    answers 101 with the right Sec-WebSocket-Accept, then echoes frames
    (which must be masked) unmasked; answers a close with a close.
    """

    def __init__(self):
        self.buffer = b""
        self.switched = False
        self.headers = {}

    def dataReceived(self, data):
        self.buffer += data
        if not self.switched:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            for line in head.split(b"\r\n")[1:]:
                name, value = line.split(b":", 1)
                self.headers[name.strip().lower()] = value.strip()
            key = self.headers[b"sec-websocket-key"]
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % (acceptKey(key),)
            )
            self.switched = True
        while True:
            parsed = parseFrame(self.buffer)
            if parsed is None:
                return
            opcode, payload, self.buffer = parsed
            if opcode == 8:
                self.transport.write(frame(8, payload))
                self.transport.loseConnection()
                return
            self.transport.write(frame(opcode, payload))


class WebSocketClient(Protocol):
    """
    Does the opening handshake, then collects the messages it gets.
    """

    def __init__(self):
        self.key = base64.b64encode(os.urandom(16))
        self.buffer = b""
        self.head = None
        self.messages = []
        self.waiting = []
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(
            b"GET /echo HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (self.key,)
        )

    def send(self, opcode, payload):
        self.transport.write(frame(opcode, payload, mask=os.urandom(4)))

    def nextMessage(self):
        if self.messages:
            d = Deferred()
            d.callback(self.messages.pop(0))
            return d
        d = Deferred()
        self.waiting.append(d)
        return d

    def dataReceived(self, data):
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        while True:
            parsed = parseFrame(self.buffer)
            if parsed is None:
                return
            opcode, payload, self.buffer = parsed
            message = (opcode, payload)
            if self.waiting:
                self.waiting.pop(0).callback(message)
            else:
                self.messages.append(message)

    def connectionLost(self, reason):
        self.closed.callback(None)


class EndToEndWebSocketTests(TestCase):
    """
    A real WebSocket conversation through manualb on 127.0.0.1.
    """

    @inlineCallbacks
    def startBalancer(self, listen):
        backendPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(EchoWebSocket)
        )
        self.addCleanup(backendPort.stopListening)
        backend = "127.0.0.1:%d" % (backendPort.getHost().port,)
        balancer = LoadBalancer(balancerConfig([backend]), reactor)
        self.addCleanup(balancer.close)
        port = yield listen.listen(balancer.site)
        self.addCleanup(port.stopListening)
        return balancer, port.getHost().port

    @inlineCallbacks
    def test_echoThroughTheBalancer(self):
        balancer, port = yield self.startBalancer(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        )
        client = WebSocketClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield self.converse(balancer, client)

    @inlineCallbacks
    def test_echoOverTLS(self):
        """
        The same over a TLS listener (wss://): the tunnel takes over the TLS
        transport.
        """
        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        balancer, port = yield self.startBalancer(
            serverFromString(
                reactor,
                "ssl:0:interface=127.0.0.1:privateKey=%s" % (pem.replace(":", "\\:"),),
            )
        )
        client = WebSocketClient()
        endpoint = wrapClientTLS(
            CertificateOptions(),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        yield connectProtocol(endpoint, client)
        yield self.converse(balancer, client)

    @inlineCallbacks
    def converse(self, balancer, client):
        """
        A text message, a 3 MiB binary one and the closing handshake, each
        echoed.
        """
        client.send(1, b"hello, websocket")
        message = yield client.nextMessage()
        line, headers = headOf(client.head + b"\r\n\r\n")
        self.assertEqual(line, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(headers[b"sec-websocket-accept"], [acceptKey(client.key)])
        self.assertEqual(headers[b"upgrade"], [b"websocket"])
        self.assertEqual(message, (1, b"hello, websocket"))

        # A large message, more than the socket buffers hold, both ways.
        big = os.urandom(3 * 1024 * 1024)
        client.send(2, big)
        message = yield client.nextMessage()
        self.assertEqual(message[0], 2)
        self.assertEqual(hashlib.sha256(message[1]).digest(), hashlib.sha256(big).digest())

        pool = balancer.pools["backends"]
        self.assertEqual(pool.servers[0].active, 1)
        client.send(8, struct.pack("!H", 1000))
        message = yield client.nextMessage()
        self.assertEqual(message, (8, struct.pack("!H", 1000)))
        yield client.closed
        # The backend's close reaches the balancer, which then lets go.
        for _ in range(50):
            if pool.servers[0].active == 0:
                break
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            yield d
        self.assertEqual(pool.servers[0].active, 0)
