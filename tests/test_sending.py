"""
L{manualb.transports.sendNow}: a write that goes to the socket at once when
nothing is queued before it, and is queued in order when the socket is full.
"""

from __future__ import annotations

import hashlib
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from manualb.transports import sendNow


class OtherTransportTests(SynchronousTestCase):
    """
    A transport that is not a plain TCP connection gets a plain C{write}.
    """

    def test_write(self) -> None:
        transport = StringTransport()
        sendNow(transport, b"head")
        sendNow(transport, b"body")
        self.assertEqual(transport.value(), b"headbody")


class _Reader(Protocol):
    """
    Keeps what it reads, without reading at first when C{paused}; fires
    C{done} with the digest and the length once the connection closes.
    """

    def __init__(self, paused: bool) -> None:
        self.paused = paused
        self.digest = hashlib.sha256()
        self.length = 0
        self.done: Deferred[tuple[str, int]] = Deferred()

    def connectionMade(self) -> None:
        if self.paused:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.length += len(data)

    def connectionLost(self, reason) -> None:
        self.done.callback((self.digest.hexdigest(), self.length))


class _Writer(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class PlainTCPTests(TestCase):
    """
    On a real TCP connection over 127.0.0.1.
    """

    @inlineCallbacks
    def connect(self, paused: bool = False):
        """
        A connected pair: the writing protocol, and the reading one.
        """
        reader = _Reader(paused)
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: reader), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory = ClientFactory.forProtocol(_Writer)
        factory.connected = Deferred()
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        writer = yield factory.connected
        self.addCleanup(writer.transport.abortConnection)
        return writer, reader

    @inlineCallbacks
    def test_sentAtOnce(self) -> None:
        """
        When nothing is queued, the bytes go to the socket straight away:
        nothing is buffered and the reactor is not asked to watch for room.
        """
        writer, reader = yield self.connect()
        transport = writer.transport
        sendNow(transport, b"x" * 1000)
        self.assertEqual((transport.dataBuffer, transport.offset), (b"", 0))
        self.assertNotIn(transport, reactor.getWriters())
        transport.loseConnection()
        digest, length = yield reader.done
        self.assertEqual(length, 1000)

    @inlineCallbacks
    def test_fullSocketKeepsOrder(self) -> None:
        """
        Bytes the socket does not take are queued, and what is written
        later goes after them: with a reader that does not read at first,
        many writes larger than the socket's buffers all arrive, in order.
        """
        writer, reader = yield self.connect(paused=True)
        transport = writer.transport
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        expected = hashlib.sha256()
        total = 0
        for number in range(64):
            piece = bytes([number]) * (256 * 1024 + number)
            sendNow(transport, piece)
            expected.update(piece)
            total += len(piece)
        # The sockets' buffers cannot hold 16 MiB: the rest is queued.
        self.assertIn(transport, reactor.getWriters())
        reader.transport.resumeProducing()
        transport.loseConnection()
        digest, length = yield reader.done
        self.assertEqual((digest, length), (expected.hexdigest(), total))

    @inlineCallbacks
    def test_closing(self) -> None:
        """
        On a connection that is closing, bytes take the queue, as with a
        plain C{write}: they arrive before the close.
        """
        writer, reader = yield self.connect()
        transport = writer.transport
        sendNow(transport, b"sent ")
        transport.loseConnection()
        sendNow(transport, b"queued")
        self.assertEqual(transport._tempDataBuffer, [b"queued"])
        digest, length = yield reader.done
        self.assertEqual(
            (digest, length), (hashlib.sha256(b"sent queued").hexdigest(), 11)
        )

    @inlineCallbacks
    def test_aborted(self) -> None:
        """
        Nothing goes to the socket of an aborted connection, as with a plain
        C{write}, whose bytes an abort drops.
        """
        writer, reader = yield self.connect()
        transport = writer.transport
        transport.abortConnection()
        sendNow(transport, b"dropped")
        digest, length = yield reader.done
        self.assertEqual(length, 0)
