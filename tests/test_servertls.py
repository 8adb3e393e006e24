"""
The TLS of manualb's listeners (L{manualb.web.tls}): writes that go out at
once, held writes that keep their order and make one record, and every
TLS behaviour of Twisted's own transport kept.

The first tests drive L{ServerTLS} in memory against a pyOpenSSL client;
the others serve the balancer on real sockets over 127.0.0.1.
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import ssl
import struct
import weakref

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from manualb.front import serving
from manualb.service import LoadBalancer
from manualb.termination import contextFactoryFor, sniEndpoint
from manualb.testing import NamedBackend, balancerConfig, listenBackend, serverAddress
from manualb.tlstesting import makeCA, makeTLSConfig, writeCA
from manualb.transports import sendNow
from manualb.web import tls as servertls
from manualb.web.tls import ServerTLS, ServerTLSFactory, _Flow, dataPath
from tests.test_endtoend import (
    PIECE,
    HangingBackend,
    SlowReader,
    StreamingBackend,
    whenBackendPaused,
)
from tests.test_termination import _clientContext, h2Request

TIMEOUT = 10
MiB = 1024 * 1024


def _records(data: bytes) -> list[tuple[int, int]]:
    """
    The TLS records in C{data}: C{(content type, length)} each.
    """
    records = []
    while data:
        kind, _, length = struct.unpack("!BHH", data[:5])
        records.append((kind, length))
        data = data[5 + length :]
    return records


_APPLICATION_DATA = 23


class _Served(Protocol):
    """
    What the server side runs: keeps what it receives, and answers each
    piece with C{answer(self, data)} when set.
    """

    answer = None

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.answer is not None:
            self.answer(self, data)


class _CountingTransport(StringTransport):
    """
    Counts the writes that reach it.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class MemoryTests(SynchronousTestCase):
    """
    L{ServerTLS} over a memory transport, against a pyOpenSSL client.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        tls = makeTLSConfig(directory, makeCA("test CA"), [["www.example.com"]])
        self.clock = Clock()
        self.served = _Served()
        factory = ServerTLSFactory(
            contextFactoryFor(tls), False, Factory.forProtocol(lambda: self.served), self.clock
        )
        self.server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsInstance(self.server, ServerTLS)
        self.transport = _CountingTransport()
        self.server.makeConnection(self.transport)
        self.client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.client.set_connect_state()
        self.client.set_tlsext_host_name(b"www.example.com")
        self.closeNotified = False

    def toServer(self) -> None:
        try:
            data = self.client.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server.dataReceived(data)

    def fromServer(self) -> bytes:
        """
        What the server sent since the last call, given to the client.
        """
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.client.bio_write(data)
        return data

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                break
            self.toServer()
            self.fromServer()
        self.toServer()
        self.fromServer()
        self.assertTrue(self.server._handshakeDone)
        self.transport.writes = 0

    def received(self) -> bytes:
        """
        The application data the client can read now; C{closeNotified}
        tells whether the server's close_notify came after it.
        """
        pieces = []
        while True:
            try:
                pieces.append(self.client.recv(1 << 20))
            except SSL.WantReadError:
                return b"".join(pieces)
            except SSL.ZeroReturnError:
                self.closeNotified = True
                return b"".join(pieces)

    def test_sentAtOnce(self) -> None:
        """
        L{sendNow} encrypts and sends at once, in one write to the
        connection, with no turn of the event loop.
        """
        self.handshake()
        sendNow(self.server, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        data = self.fromServer()
        self.assertEqual([kind for kind, _ in _records(data)], [_APPLICATION_DATA])
        self.assertEqual(self.received(), b"HTTP/1.1 200 OK\r\n\r\n")

    def test_writesHeldForATurn(self) -> None:
        """
        Plain writes are held for one turn of the event loop, then sent as
        one record, as Twisted's own TLS transport does.
        """
        self.handshake()
        self.server.write(b"a")
        self.server.writeSequence([b"b", b"c"])
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0)
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual([kind for kind, _ in _records(self.fromServer())], [_APPLICATION_DATA])
        self.assertEqual(self.received(), b"abc")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sendNowAfterHeldWrites(self) -> None:
        """
        L{sendNow} sends the writes held before it first, at once.
        """
        self.handshake()
        self.server.write(b"first ")
        sendNow(self.server, b"second")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fromServer()
        self.assertEqual(self.received(), b"first second")

    def test_answersToReceivedDataTogether(self) -> None:
        """
        What the protocol writes while it is handed received data goes out
        once that is done, in one record and one write, with no turn of the
        event loop.
        """
        self.handshake()

        def answer(served, data):
            served.transport.write(b"1")
            sendNow(served.transport, b"2")
            served.transport.writeSequence([b"3", b"4"])

        self.served.answer = answer
        self.client.send(b"ping")
        self.toServer()
        self.assertEqual(self.served.received, [b"ping"])
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([kind for kind, _ in _records(self.fromServer())], [_APPLICATION_DATA])
        self.assertEqual(self.received(), b"1234")

    def test_largeWrite(self) -> None:
        """
        A large write arrives whole, in records of at most 16 KiB, with one
        write to the connection.
        """
        self.handshake()
        body = PIECE * 40 + b"end"
        sendNow(self.server, body)
        self.assertEqual(self.transport.writes, 1)
        records = _records(self.fromServer())
        self.assertEqual({kind for kind, _ in records}, {_APPLICATION_DATA})
        self.assertLessEqual(max(length for _, length in records), 2**14 + 256)
        self.assertEqual(self.received(), body)

    def test_writeBeforeHandshake(self) -> None:
        """
        Written before the handshake is done, the bytes wait for it.
        """
        sendNow(self.server, b"early")
        self.handshake()
        self.fromServer()
        self.assertEqual(self.received(), b"early")

    def test_loseConnectionSendsHeld(self) -> None:
        """
        Closing sends the held writes, then TLS's close_notify.
        """
        self.handshake()
        self.server.write(b"last words")
        self.server.loseConnection()
        self.fromServer()
        self.assertEqual(self.received(), b"last words")
        self.assertTrue(self.closeNotified)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortDropsHeld(self) -> None:
        """
        An abort sends nothing held and leaves no call behind.
        """
        self.handshake()
        self.server.write(b"never")
        self.server.abortConnection()
        self.assertTrue(self.transport.disconnecting)
        self.fromServer()
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connectionLostDropsHeld(self) -> None:
        """
        A connection lost with writes held leaves no call behind.
        """
        self.handshake()
        self.server.write(b"never")
        self.server.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientCloseNotify(self) -> None:
        """
        The client's close_notify is answered with the server's, and the
        connection closed.
        """
        self.handshake()
        self.client.shutdown()
        self.toServer()
        self.assertTrue(self.transport.disconnecting)
        data = self.fromServer()
        self.assertEqual([kind for kind, _ in _records(data)], [_APPLICATION_DATA])
        self.assertEqual(self.received(), b"")
        self.assertTrue(self.closeNotified)

    def test_recordsInPieces(self) -> None:
        """
        Records that come a byte at a time, or several in one piece, or
        split in their header, are all read, each as soon as it is whole.
        """
        self.handshake()
        self.client.send(b"first")
        data = self.client.bio_read(1 << 20)
        for index in range(len(data)):
            self.server.dataReceived(data[index : index + 1])
            whole = [b"first"] if index == len(data) - 1 else []
            self.assertEqual(self.served.received, whole)
        self.client.send(b"second")
        self.client.send(b"third")
        self.client.send(b"fourth")
        data = self.client.bio_read(1 << 20)
        self.server.dataReceived(data)
        self.assertEqual(self.served.received, [b"first", b"second", b"third", b"fourth"])
        self.client.send(b"fifth")
        self.client.send(b"sixth")
        data = self.client.bio_read(1 << 20)
        [(_, length), _] = _records(data)
        # The first record and three bytes of the second's header.
        self.server.dataReceived(data[: 5 + length + 3])
        self.assertEqual(self.served.received[-1], b"fifth")
        self.server.dataReceived(data[5 + length + 3 :])
        self.assertEqual(self.served.received[-2:], [b"fifth", b"sixth"])
        # One whole record alone, then one in two pieces.
        self.client.send(b"ninth")
        self.server.dataReceived(self.client.bio_read(1 << 20))
        self.assertEqual(self.served.received[-1], b"ninth")
        self.client.send(b"tenth")
        data = self.client.bio_read(1 << 20)
        self.server.dataReceived(data[:4])
        self.server.dataReceived(data[4:])
        self.assertEqual(self.served.received[-1], b"tenth")

    def test_directPath(self) -> None:
        """
        Once the handshake is done, application data goes in and out of
        OpenSSL by direct calls (where pyOpenSSL's bindings are found, as
        they are for the versions manualb is tested with).
        """
        self.handshake()
        self.client.send(b"ping")
        self.toServer()
        sendNow(self.server, b"pong")
        self.fromServer()
        self.assertEqual(self.served.received, [b"ping"])
        self.assertEqual(self.received(), b"pong")
        self.assertIsInstance(self.server._flow.path, servertls._DirectPath)

    def test_publicPathWithoutBindings(self) -> None:
        """
        A connection that lacks what the direct calls need is served by
        pyOpenSSL's public methods.
        """
        self.handshake()
        connection = self.server._tlsConnection
        self.assertIsInstance(dataPath(connection), servertls._DirectPath)
        self.patch(servertls, "_BUFFER", None)
        self.assertIsInstance(dataPath(connection), servertls._PublicPath)

    def assertFreedOnceLost(self, *received: bytes) -> None:
        """
        After a request, hand the server C{received}, then lose its
        connection, and check that it is freed by reference counting alone
        (the cycle collector off) as soon as nothing else holds it.
        """
        self.handshake()
        self.client.send(b"ping")
        self.toServer()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for data in received:
            self.server.dataReceived(data)
        self.server.connectionLost(Failure(ConnectionDone()))
        freed = weakref.ref(self.server)
        self.server = self.served = None
        self.assertIsNone(freed())

    def test_freedWhenLost(self) -> None:
        """
        A connection lost after a corrupt record is freed, its failure with
        it.
        """
        self.assertFreedOnceLost(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)

    def test_freedWhenCutOff(self) -> None:
        """
        A connection whose client goes without a close_notify (an
        unexpected EOF, which OpenSSL reports as an error) is freed.
        """
        self.assertFreedOnceLost()

    def test_notARecordAfterHandshake(self) -> None:
        """
        Bytes that cannot be a TLS record close the connection at once,
        with an alert.
        """
        self.handshake()
        self.server.dataReceived(b"\x17\x03\x03\xff\xff" + b"\x00" * 32)
        self.assertTrue(self.transport.disconnecting)
        self.assertNotEqual(self.transport.value(), b"")

    def test_garbageAfterHandshake(self) -> None:
        """
        A corrupt record closes the connection, with an alert.
        """
        self.handshake()
        self.server.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        self.assertTrue(self.transport.disconnecting)
        self.assertNotEqual(self.transport.value(), b"")


class FramingTests(SynchronousTestCase):
    """
    L{_Flow} counts the whole records of what a connection receives,
    however it is cut.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(max_size=300), min_size=1, max_size=8),
        st.lists(st.integers(min_value=1, max_value=400), max_size=10),
    )
    def test_anyCut(self, payloads: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(
            b"\x17\x03\x03" + len(payload).to_bytes(2, "big") + payload for payload in payloads
        )
        flow = _Flow()
        at = 0
        for cut in cuts + [len(stream)]:
            if stream[at : at + cut]:
                flow.count(stream[at : at + cut])
            at += cut
        self.assertTrue(flow.framed)
        self.assertEqual(flow.unread, len(payloads))
        self.assertEqual((flow.left, flow.partial), (0, b""))

    def test_notRecords(self) -> None:
        """
        Bytes that are not TLS records stop the counting.
        """
        flow = _Flow()
        flow.count(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertFalse(flow.framed)


class PublicPathMemoryTests(MemoryTests):
    """
    L{MemoryTests} with application data moved by pyOpenSSL's public
    methods, as where its bindings are not found.
    """

    def setUp(self) -> None:
        self.patch(servertls, "dataPath", servertls._PublicPath)
        super().setUp()

    def test_directPath(self) -> None:
        """
        The public methods serve instead of the direct calls.
        """
        self.handshake()
        self.client.send(b"ping")
        self.toServer()
        self.assertIsInstance(self.server._flow.path, servertls._PublicPath)


# Real sockets ------------------------------------------------------------------


def _keepAliveRequests(port: int, cafile: str, count: int, pipelined: int) -> list[bytes]:
    """
    C{count} requests one after the other on one TLS connection, then
    C{pipelined} more sent at once; return the bodies.  Blocking: run it
    in a thread.
    """
    request = b"GET /n HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    context = _clientContext(cafile)
    bodies = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            buffer = b""

            def response() -> bytes:
                nonlocal buffer
                while b"\r\n\r\n" not in buffer:
                    data = tls.recv(65536)
                    if not data:
                        raise AssertionError("closed after %d responses" % (len(bodies),))
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                assert lines[0] == b"HTTP/1.1 200 OK", lines[0]
                [length] = [
                    int(line.split(b":", 1)[1])
                    for line in lines[1:]
                    if line.lower().startswith(b"content-length:")
                ]
                while len(buffer) < length:
                    data = tls.recv(65536)
                    if not data:
                        raise AssertionError("short body")
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                return body

            for _ in range(count):
                tls.sendall(request)
                bodies.append(response())
            tls.sendall(request * pipelined)
            for _ in range(pipelined):
                bodies.append(response())
    return bodies


def _garbage(port: int, data: bytes) -> bytes:
    """
    Send C{data} on a new connection and return all the server sends back
    before it closes.  Blocking: run it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        raw.sendall(data)
        received = b""
        while True:
            try:
                piece = raw.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
    return received


def _corruptRecord(port: int, cafile: str) -> bytes:
    """
    Handshake, then send a record that does not decrypt; return what the
    server sends back before it closes.  Blocking: run it in a thread.
    """
    context = _clientContext(cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        tls = context.wrap_socket(raw, server_hostname="www.example.com")
        tls.sendall(b"GET /n HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        tls.recv(65536)
        # Under the TLS layer, on the socket itself.
        os.write(tls.fileno(), b"\x17\x03\x03\x00\x40" + b"\x5a" * 64)
        try:
            while tls.recv(65536):
                pass
        except (ssl.SSLError, ConnectionResetError):
            return b"alert"
    return b"closed"


class RealSocketTests(TestCase):
    """
    The balancer behind an C{sni:} endpoint with L{ServerTLSFactory}, on
    127.0.0.1, with the front end the tests run with.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        ca = makeCA("test CA")
        self.cafile = writeCA(directory, ca)
        self.tls = makeTLSConfig(directory, ca, [["www.example.com"]])

    @inlineCallbacks
    def serve(self, resource):
        """
        The balancer in front of one backend serving C{resource}; return
        the port of its TLS listener.
        """
        backendPort = yield listenBackend(reactor, resource)
        self.addCleanup(backendPort.stopListening)
        self.balancer = LoadBalancer(balancerConfig([serverAddress(backendPort)]), reactor)
        self.addCleanup(self.balancer.close)
        endpoint = sniEndpoint(reactor, "sni:0:interface=127.0.0.1", self.tls)
        endpoint.tlsFactory = ServerTLSFactory
        port = yield endpoint.listen(serving(self.balancer.site))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def clientEndpoint(self, port: int):
        trust = Certificate.loadPEM(open(self.cafile, "rb").read())
        return wrapClientTLS(
            optionsForClientTLS("www.example.com", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )

    def test_serviceUsesServerTLS(self) -> None:
        """
        The balancer's C{sni:} listeners wrap their connections in
        L{ServerTLS}.
        """
        config = attrs.evolve(balancerConfig(["127.0.0.1:1"]), tls=self.tls)
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(balancer.close)
        endpoint = balancer.endpoint("sni:0:interface=127.0.0.1")
        self.assertIs(endpoint.tlsFactory, ServerTLSFactory)

    @inlineCallbacks
    def test_manyRequestsOnOneConnection(self) -> None:
        """
        Hundreds of requests on one kept-alive TLS connection, then a batch
        pipelined, are all answered, in order, on that connection.
        """
        backend = NamedBackend("Backend A")
        port = yield self.serve(backend)
        bodies = yield deferToThread(_keepAliveRequests, port, self.cafile, 300, 20)
        self.assertEqual(bodies, [b"Backend A\n"] * 320)
        self.assertEqual(len(backend.requests), 320)

    @inlineCallbacks
    def test_h2(self) -> None:
        """
        A client that negotiates C{h2} is served HTTP/2 over L{ServerTLS}.
        """
        port = yield self.serve(NamedBackend("Backend A"))
        for method, body in [("GET", None), ("POST", b"x" * 100000)]:
            alpn, status, headers, received = yield deferToThread(
                h2Request, port, "www.example.com", self.cafile, method, "/p", body
            )
            self.assertEqual((alpn, status, received), ("h2", 200, b"Backend A\n"))

    @inlineCallbacks
    def test_slowReaderLargeBody(self) -> None:
        """
        A client that stops reading a large body makes the proxy stop
        reading from the backend; when it reads again, the whole body
        arrives, in order.
        """
        total = 64 * MiB
        backend = StreamingBackend(total)
        port = yield self.serve(backend)
        proxyPaused = whenBackendPaused(self)
        client = SlowReader(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        yield connectProtocol(self.clientEndpoint(port), client)
        yield client.firstData
        yield proxyPaused
        yield backend.streams[0].paused
        self.assertLess(backend.streams[0].produced, total // 2)
        client.transport.resumeProducing()
        yield client.closed
        body = b"".join(client.data).split(b"\r\n\r\n", 1)[1]
        self.assertEqual(len(body), total)
        expected = hashlib.sha256(PIECE * (total // len(PIECE))).hexdigest()
        self.assertEqual(hashlib.sha256(body).hexdigest(), expected)

    @inlineCallbacks
    def test_clientGoesMidResponse(self) -> None:
        """
        A client that closes its connection in the middle of a large
        response makes the proxy drop the exchange: the backend's
        connection goes too.
        """
        backend = StreamingBackend(256 * MiB)
        port = yield self.serve(backend)
        client = SlowReader(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        yield connectProtocol(self.clientEndpoint(port), client)
        yield client.firstData
        yield backend.streams[0].paused
        stream = backend.streams[0]
        gone = Deferred()
        stream.request.notifyFinish().addBoth(lambda reason: gone.callback(None))
        client.transport.abortConnection()
        yield client.closed
        yield gone
        self.assertIsNone(stream.request)

    @inlineCallbacks
    def test_clientGoesWhileWaiting(self) -> None:
        """
        A client that sends close_notify and goes while its request waits
        for the backend ends the backend's request.
        """
        backend = HangingBackend()
        port = yield self.serve(backend)
        client = SlowReader(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        yield connectProtocol(self.clientEndpoint(port), client)
        yield backend.received
        client.transport.loseConnection()
        yield client.closed
        yield backend.gone

    @inlineCallbacks
    def test_garbage(self) -> None:
        """
        Bytes that are not TLS get the connection closed (with an alert at
        most), and the listener still serves.
        """
        port = yield self.serve(NamedBackend("Backend A"))
        received = yield deferToThread(_garbage, port, b"GET / HTTP/1.1\r\n\r\n" * 10)
        self.assertLess(len(received), 100)
        received = yield deferToThread(_garbage, port, b"\x16\x03\x01\x00\x05hello")
        self.assertLess(len(received), 100)
        bodies = yield deferToThread(_keepAliveRequests, port, self.cafile, 2, 0)
        self.assertEqual(bodies, [b"Backend A\n"] * 2)

    @inlineCallbacks
    def test_corruptRecord(self) -> None:
        """
        A record that does not decrypt, after the handshake, gets the
        connection closed with an alert, and the listener still serves.
        """
        port = yield self.serve(NamedBackend("Backend A"))
        outcome = yield deferToThread(_corruptRecord, port, self.cafile)
        self.assertIn(outcome, (b"alert", b"closed"))
        bodies = yield deferToThread(_keepAliveRequests, port, self.cafile, 2, 0)
        self.assertEqual(bodies, [b"Backend A\n"] * 2)
