"""
The backend side: the HTTP/1.1 response reader and the connection pool, on
in-memory transports.
"""

from hypothesis import given, strategies as st
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb import interfaces
from manualb.config import ServerAddress, UpstreamConfig
from manualb.handoff import (
    TRANSITIONS,
    ConnectionPool,
    ConnectionState,
    IResponseReceiver,
    UpstreamBadResponse,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamTimeout,
)
from tests.fuzzing import fuzzSettings


def checkTransitions(testCase):
    """
    Record every move of every L{UpstreamConnection}'s state during
    C{testCase}, and fail it if one is not in L{TRANSITIONS}.

    @return: The list of C{(from, to)} moves, which grows as they are made.
    """
    moves = []
    illegal = []

    def getState(connection):
        return connection.__dict__.get("_checkedState", ConnectionState.IDLE)

    def setState(connection, state):
        old = getState(connection)
        moves.append((old, state))
        if state not in TRANSITIONS[old]:
            illegal.append((old, state))
        connection.__dict__["_checkedState"] = state

    testCase.patch(UpstreamConnection, "_state", property(getState, setState))
    testCase.addCleanup(lambda: testCase.assertEqual(illegal, [], "illegal moves"))
    return moves


@implementer(IResponseReceiver)
class Receiver:
    def __init__(self):
        self.head = None
        self.body = b""
        self.done = False
        self.failure = None

    def responseStarted(self, code, reason, headers):
        self.head = (code, reason, headers)

    def responseData(self, data):
        self.body += data

    def responseDone(self):
        self.done = True

    def responseFailed(self, reason):
        self.failure = reason


class ConnectionTests(SynchronousTestCase):
    def setUp(self):
        self.moves = checkTransitions(self)
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig(
            "pool", (ServerAddress("10.0.0.1", 80),), send_timeout=10.0, read_timeout=30.0
        )
        self.pool = ConnectionPool(self.reactor, self.config.servers[0].address, self.config)

    def connect(self):
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return self.successResultOf(connecting), transport

    def exchange(self, response, method=b"GET", pieces=None):
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % (method,), method, receiver, chunked=False)
        connection.finishBody()
        if pieces is None:
            connection.dataReceived(response)
        else:
            for i in range(0, len(response), pieces):
                connection.dataReceived(response[i : i + pieces])
        return receiver, connection, transport

    def test_receiverInterface(self):
        verifyObject(IResponseReceiver, Receiver())
        self.assertIs(IResponseReceiver, interfaces.IResponseReceiver)

    def test_states(self):
        """
        An exchange takes a connection from idle through sending, awaiting
        and receiving back to idle, in its pool.
        """
        connection, transport = self.connect()
        self.assertIs(connection.state, ConnectionState.IDLE)
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=True)
        self.assertIs(connection.state, ConnectionState.SENDING)
        connection.writeBody(b"abc")
        connection.finishBody()
        self.assertIs(connection.state, ConnectionState.AWAITING)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
        self.assertIs(connection.state, ConnectionState.RECEIVING)
        connection.dataReceived(b"k")
        self.assertIs(connection.state, ConnectionState.IDLE)
        self.assertEqual(self.pool.idleCount, 1)
        S = ConnectionState
        self.assertEqual(
            self.moves,
            [(S.IDLE, S.SENDING), (S.SENDING, S.AWAITING), (S.AWAITING, S.RECEIVING), (S.RECEIVING, S.IDLE)],
        )

    def test_pausedThenIdle(self):
        """
        A connection whose reading the client paused (back-pressure) reads
        again once its response ends and it goes back to the pool; one never
        paused is not resumed for nothing.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET", receiver, chunked=False)
        connection.finishBody()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
        connection.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        connection.dataReceived(b"k")
        self.assertIs(connection.state, ConnectionState.IDLE)
        self.assertEqual(transport.producerState, "producing")
        resumed = []
        transport.resumeProducing = lambda: resumed.append(True)
        taken = self.pool.takeIdle()
        self.assertIs(taken, connection)
        connection.sendRequest(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET", Receiver(), chunked=False)
        connection.finishBody()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertIs(connection.state, ConnectionState.IDLE)
        self.assertEqual(resumed, [])

    def test_notKeptIdle(self):
        """
        A pool told not to keep idle connections (its server set down or
        draining) closes the idle ones at once and each busy one once its
        exchange is done; told again to keep them, it does.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.pool.idleCount, 1)
        self.pool.keepIdle(False)
        self.assertFalse(transport.connected)
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(receiver.done)
        self.assertFalse(transport.connected)
        self.pool.keepIdle(True)
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(transport.connected)
        self.assertEqual(self.pool.idleCount, 1)

    def test_notReusedIsClosing(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(receiver.done)
        self.assertIs(connection.state, ConnectionState.CLOSED)
        self.assertIn((ConnectionState.RECEIVING, ConnectionState.CLOSING), self.moves)

    def test_answeredEarly(self):
        """
        A response that comes, and ends, while the request body is still
        going out: the receiver has it whole, the rest of the body is not
        sent, and the connection is spent.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=True)
        connection.writeBody(b"abc")
        connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nno")
        self.assertIs(connection.state, ConnectionState.ANSWERED_EARLY)
        connection.dataReceived(b"pe")
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"nope")
        self.assertFalse(transport.connected)
        sent = transport.value()
        connection.writeBody(b"more")
        connection.finishBody()
        self.assertEqual(transport.value(), sent)
        self.assertEqual(self.pool.idleCount, 0)

    def test_answeredEarlyThenBodyDone(self):
        """
        When the body is complete before the early response ends, the
        connection is reused as after any exchange.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
        connection.writeBody(b"abc")
        connection.finishBody()
        self.assertIs(connection.state, ConnectionState.RECEIVING)
        connection.dataReceived(b"k")
        self.assertTrue(receiver.done)
        self.assertEqual(self.pool.idleCount, 1)
        self.assertTrue(transport.connected)

    def test_receiverAbortsOnHead(self):
        """
        A receiver may drop the connection as the head arrives (a status
        that counts as a failure, retried elsewhere), also when the
        response has no body: nothing more reaches it, and nothing raises.
        """
        for response in [
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n",
        ]:
            connection, transport = self.connect()
            receiver = Receiver()
            receiver.responseStarted = lambda code, reason, headers: connection.abort()
            connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
            connection.finishBody()
            connection.dataReceived(response)
            self.assertFalse(receiver.done)
            self.assertIsNone(receiver.failure)
            self.assertEqual(receiver.body, b"")
            self.assertFalse(transport.connected)
            self.assertIs(connection.state, ConnectionState.CLOSED)

    def test_closeDelimitedBody(self):
        """
        A body without a length ends with a clean close; a broken connection
        fails it.
        """
        receiver, connection, transport = self.exchange(b"HTTP/1.1 200 OK\r\n\r\nsome")
        transport.loseConnection()
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"some")

        connection, transport = self.connect()
        transport = StringTransport()
        connection.makeConnection(transport)
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        connection.finishBody()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nsome")
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertFalse(receiver.done)
        self.assertIsInstance(receiver.failure, UpstreamClosed)
        self.assertFalse(receiver.failure.beforeResponse)

    def test_closedMidHead(self):
        """
        A connection closed after part of a head is not taken for an idle
        connection the backend gave up: the exchange is not tried again.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        connection.dataReceived(b"HTTP/1.1 200")
        transport.loseConnection()
        self.assertIsInstance(receiver.failure, UpstreamClosed)
        self.assertFalse(receiver.failure.beforeResponse)

    def test_sentOnAbortedConnection(self):
        """
        An exchange started on a connection aborted while idle, before its
        loss was seen, fails with the loss as a closed kept-alive
        connection does.
        """
        connection, transport = self.connect()
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.abort()
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        connection.finishBody()
        self.assertIsNone(receiver.failure)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(receiver.failure, UpstreamClosed)
        self.assertTrue(receiver.failure.beforeResponse)

    def test_chunkedByteByByte(self):
        """
        Chunked framing split at every possible point is decoded, with chunk
        extensions and trailers, and the connection goes back to the pool.
        """
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        receiver, connection, transport = self.exchange(response, pieces=1)
        self.assertEqual(receiver.body, b"hello" + b"x" * 26)
        self.assertTrue(receiver.done)
        self.assertEqual(self.pool.idleCount, 1)

    def test_repeatedHeadersInOrder(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 201 Created\r\nA: 1\r\nB: 2\r\nA: 3\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            receiver.head,
            (201, b"Created", [(b"A", b"1"), (b"B", b"2"), (b"A", b"3"), (b"Content-Length", b"0")]),
        )

    def test_transferEncodingOverridesLength(self):
        """
        With both Transfer-Encoding and Content-Length, the chunked framing
        counts, Content-Length is not passed on, and the connection is not
        reused.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n"
        )
        self.assertEqual(receiver.body, b"ok")
        self.assertNotIn(b"Content-Length", [name for name, value in receiver.head[2]])
        self.assertEqual(self.pool.idleCount, 0)
        self.assertFalse(transport.connected)

    def test_repeatedEqualLengthsAccepted(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(receiver.body, b"ok")
        self.assertTrue(receiver.done)

    def test_badResponses(self):
        """
        Framing that cannot be trusted fails the exchange and drops the
        connection.
        """
        for response in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
            b"HTTP/1.1 200 OK\r\nFolded: a\r\n  b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000,
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        ]:
            receiver, connection, transport = self.exchange(response)
            self.assertIsInstance(receiver.failure, UpstreamBadResponse, repr(response[:60]))
            self.assertFalse(transport.connected)

    def test_extraBytesAfterResponse(self):
        """
        A backend that sends more than its response: the connection is not
        reused.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE"
        )
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"ok")
        self.assertFalse(transport.connected)

    def test_http10NotReused(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(receiver.done)
        self.assertFalse(transport.connected)

    def test_unsolicitedDataWhileIdle(self):
        """
        An idle connection on which the backend speaks is dropped.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.pool.idleCount, 1)
        connection.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertFalse(transport.connected)
        self.assertEqual(self.pool.idleCount, 0)

    def test_closedBeforeResponse(self):
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        transport.loseConnection()
        self.assertIsInstance(receiver.failure, UpstreamClosed)
        self.assertTrue(receiver.failure.beforeResponse)

    def test_sendTimeout(self):
        """
        A backend that takes none of the request body for send_timeout fails
        the exchange.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=True)

        class Source:
            paused = False

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False

            def stopProducing(self):
                pass

        source = Source()
        connection.attachBody(source)
        transport.producer.pauseProducing()
        self.assertTrue(source.paused)
        self.reactor.advance(9)
        transport.producer.resumeProducing()
        transport.producer.pauseProducing()
        self.reactor.advance(9)
        self.assertIsNone(receiver.failure)
        self.reactor.advance(1)
        self.assertIsInstance(receiver.failure, UpstreamTimeout)
        self.assertFalse(transport.connected)

    def test_chunkedRequestBody(self):
        connection, transport = self.connect()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", Receiver(), chunked=True)
        transport.clear()
        connection.writeBody(b"abc")
        connection.writeBody(b"")
        connection.finishBody()
        self.assertEqual(transport.value(), b"3\r\nabc\r\n0\r\n\r\n")

    def test_closeAll(self):
        first, firstTransport = self.connect()
        self.pool.release(first)
        second, secondTransport = self.connect()
        self.pool.closeAll()
        self.assertFalse(firstTransport.connected)
        self.assertFalse(secondTransport.connected)
        self.assertEqual(self.pool.idleCount, 0)


class UpgradeTests(SynchronousTestCase):
    """
    A request sent with C{upgrade=True}, answered with a 101 or not.
    """

    def setUp(self):
        self.moves = checkTransitions(self)
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig("pool", (ServerAddress("10.0.0.1", 80),), read_timeout=30.0)
        self.pool = ConnectionPool(self.reactor, self.config.servers[0].address, self.config)

    def upgrade(self, response):
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        receiver = Receiver()
        connection.sendRequest(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET",
            receiver,
            chunked=False,
            upgrade=True,
        )
        connection.finishBody()
        connection.dataReceived(response)
        return receiver, connection, transport

    def test_switchToTunnel(self):
        """
        After a 101, everything the backend sends is raw data, HTTP-looking
        or not, and the read timeout no longer applies.
        """
        receiver, connection, transport = self.upgrade(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nraw"
        )
        self.assertEqual(
            receiver.head,
            (101, b"Switching Protocols", [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]),
        )
        self.assertTrue(connection.tunnelling)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(receiver.body, b"rawHTTP/1.1 200 OK\r\n\r\n")
        self.reactor.advance(3600)
        self.assertTrue(transport.connected)
        self.assertIsNone(receiver.failure)

    def test_tunnelClosedCleanly(self):
        receiver, connection, transport = self.upgrade(b"HTTP/1.1 101 Switching\r\n\r\n")
        transport.loseConnection()
        self.assertTrue(receiver.done)
        self.assertEqual(self.pool.idleCount, 0)

    def test_tunnelAbortedTellsReceiver(self):
        """
        Closing the pool's connections (shutdown) ends a tunnel, and its
        receiver hears of it.
        """
        receiver, connection, transport = self.upgrade(b"HTTP/1.1 101 Switching\r\n\r\n")
        self.pool.closeAll()
        self.assertFalse(transport.connected)
        # (An in-memory abort looks like a clean close.)
        self.assertTrue(receiver.done or isinstance(receiver.failure, UpstreamClosed))

    def test_otherAnswerNotReused(self):
        """
        Any other answer to an upgrade request is an ordinary response, but
        the connection is closed after it: the backend may have meant to
        switch.
        """
        receiver, connection, transport = self.upgrade(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"ok")
        self.assertFalse(connection.tunnelling)
        self.assertEqual(self.pool.idleCount, 0)
        self.assertFalse(transport.connected)

    def test_readTimeoutBeforeSwitch(self):
        """
        Waiting for the answer to an upgrade request is bounded by the read
        timeout, as for any request.
        """
        receiver, connection, transport = self.upgrade(b"")
        self.reactor.advance(30)
        self.assertIsInstance(receiver.failure, UpstreamTimeout)

    def test_unaskedSwitch(self):
        """
        A 101 to a request that asked for no upgrade is a bad response.
        """
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        connection.finishBody()
        connection.dataReceived(b"HTTP/1.1 101 Switching\r\n\r\n")
        self.assertIsInstance(receiver.failure, UpstreamBadResponse)
        self.assertFalse(transport.connected)

    def test_switchEndsRequestBody(self):
        """
        After a 101 the tunnel owns the connection: the request body's
        producer is unregistered (the tunnel registers its own), what is
        left of the body is not written, and its end does not start the
        read timeout.
        """
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=True, upgrade=True)
        source = StringTransport()
        connection.attachBody(source)
        self.assertIsNotNone(transport.producer)
        connection.dataReceived(b"HTTP/1.1 101 Switching\r\n\r\n")
        self.assertIs(connection.state, ConnectionState.TUNNEL)
        self.assertIsNone(transport.producer)
        sent = transport.value()
        connection.writeBody(b"late")
        connection.finishBody()
        self.assertEqual(transport.value(), sent)
        self.reactor.advance(3600)
        self.assertTrue(transport.connected)
        self.assertIsNone(receiver.failure)


class _CountingReceiver(Receiver):
    def __init__(self):
        super().__init__()
        self.ends = 0

    def responseDone(self):
        self.ends += 1
        self.done = True

    def responseFailed(self, reason):
        self.ends += 1
        self.failure = reason


_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nbody",
    b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\nraw",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
]


class ConnectionFuzzTests(SynchronousTestCase):
    """
    Whatever a backend sends, in whatever pieces, at whatever point of the
    request, the connection raises nothing, tells the receiver of the end
    exactly once, moves only as L{TRANSITIONS} allows, and is either back in
    its pool or closed.
    """

    @fuzzSettings(300)
    @given(
        st.sampled_from(_RESPONSES),
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=100),
                st.sampled_from([b"", b"\r\n", b"\n", b"\x00", b"0", b";", b"\r\n\r\n", b"Connection: close\r\n"]),
                st.integers(min_value=0, max_value=3),
            ),
            max_size=3,
        ),
        st.lists(st.integers(min_value=0, max_value=100), max_size=5),
        st.integers(min_value=0, max_value=6),
        st.booleans(),
        st.sampled_from([None, ConnectionDone, ConnectionLost]),
    )
    def test_anyResponse(self, response, mutations, positions, bodyDoneAt, upgrade, close):
        checkTransitions(self)
        reactor = MemoryReactorClock()
        config = UpstreamConfig("pool", (ServerAddress("10.0.0.1", 80),))
        pool = ConnectionPool(reactor, config.servers[0].address, config)
        connecting = pool.connect()
        factory = reactor.tcpClients.pop()[2]
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        data = response
        for at, insert, delete in mutations:
            at %= len(data) + 1
            data = data[:at] + insert + data[at + delete :]
        cuts = sorted({p % (len(data) + 1) for p in positions})
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        receiver = _CountingReceiver()
        connection.sendRequest(b"PUT / HTTP/1.1\r\n\r\n", b"PUT", receiver, chunked=True, upgrade=upgrade)
        for number, piece in enumerate(pieces):
            if number == bodyDoneAt:
                connection.finishBody()
            connection.writeBody(b"body")
            connection.dataReceived(piece)
        connection.finishBody()
        if close is not None and transport.connected:
            transport.connected = False
            connection.connectionLost(Failure(close()))
        if connection.state in (ConnectionState.IDLE, ConnectionState.TUNNEL):
            self.assertTrue(transport.connected)
        if connection.state is ConnectionState.IDLE:
            self.assertEqual(receiver.ends, 1)
            self.assertEqual(pool.idleCount, 1)
        elif connection.state is ConnectionState.CLOSED:
            self.assertEqual(receiver.ends, 1)
            self.assertFalse(transport.connected)
        else:
            # Waiting for more of the response, or a tunnel.
            self.assertIn(
                connection.state,
                (ConnectionState.AWAITING, ConnectionState.RECEIVING, ConnectionState.TUNNEL),
            )
            self.assertEqual(receiver.ends, 0)
            reactor.advance(config.read_timeout)
            if connection.state is not ConnectionState.TUNNEL:
                self.assertIsInstance(receiver.failure, UpstreamTimeout)
                self.assertEqual(receiver.ends, 1)
