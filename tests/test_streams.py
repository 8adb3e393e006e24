"""
The layer-4 (TCP) proxy, the byte tunnel under it, the PROXY protocol headers
and the TCP health probe: in memory, then over real sockets on 127.0.0.1.
"""

import hashlib
from ipaddress import ip_address

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from manualb.config import HealthCheckConfig, ServerAddress, StreamConfig, UpstreamConfig
from manualb.health import HTTPProbe, HealthLog, HealthMonitor, TCPProbe
from manualb.proxyprotocol import SIGNATURE, v1Header, v2Header
from manualb.pools import buildPool as _buildPool
from manualb.records import Outcome, StopReason
from manualb.streams import StreamProxyFactory, Tunnel

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LISTENER = IPv4Address("TCP", "198.51.100.1", 7000)
MiB = 1024 * 1024


class Peer:
    """
    One end of an in-memory connection: what the proxy writes lands in
    C{transport}; C{send} delivers to the proxy's protocol.
    """

    def __init__(self, protocol, transport):
        self.protocol = protocol
        self.transport = transport

    def send(self, data):
        self.protocol.dataReceived(data)

    def received(self):
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def connected(self):
        return self.transport.connected and not self.transport.disconnecting

    def close(self):
        self.transport.loseConnection()

    def reset(self):
        if self.transport.connected:
            self.transport.connected = False
            self.protocol.connectionLost(Failure(ConnectionLost("reset")))


class MemoryStream:
    """
    A stream proxy driven in memory.
    """

    def __init__(self, servers=("10.0.0.1:9001", "10.0.0.2:9002"), stream=None, **upstream):
        self.reactor = MemoryReactorClock()
        addresses = []
        for server in servers:
            host, port = server.rsplit(":", 1)
            addresses.append(ServerAddress(host, int(port)))
        self.pool = _buildPool(UpstreamConfig("tcp", addresses, **upstream), self.reactor)
        self.config = stream or StreamConfig("s", ["tcp:7000"], "tcp")
        self.factory = StreamProxyFactory(self.config, self.pool, self.reactor)

    def client(self, address=CLIENT):
        protocol = self.factory.buildProtocol(address)
        transport = StringTransportWithDisconnection(hostAddress=LISTENER, peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def _attempts(self):
        return [
            index
            for index, connector in enumerate(self.reactor.connectors)
            if not connector.stoppedConnecting
        ]

    def pending(self):
        return [self.reactor.tcpClients[index][:2] for index in self._attempts()]

    def _take(self, index):
        position = self._attempts()[index]
        self.reactor.connectors[position].stoppedConnecting = True
        return self.reactor.connectors[position], self.reactor.tcpClients[position]

    def accept(self, index=0):
        connector, (host, port, factory, timeout, bind) = self._take(index)
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def refuse(self, index=0):
        connector, (host, port, factory, timeout, bind) = self._take(index)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


class StreamProxyTests(SynchronousTestCase):
    def setUp(self):
        self.lb = MemoryStream()
        self.servers = self.lb.pool.servers

    def test_pickConnectJoin(self):
        """
        A client's connection is not read from until its server is
        connected; then bytes go both ways, and the server counts it.
        """
        client = self.lb.client()
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(self.lb.pending(), [("10.0.0.1", 9001)])
        self.assertEqual(self.servers[0].active, 1)
        server = self.lb.accept()
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"hello")
        self.assertEqual(server.received(), b"hello")
        server.send(b"world")
        self.assertEqual(client.received(), b"world")
        self.assertEqual(self.servers[0].active, 1)
        self.assertEqual(self.lb.factory.connections, 1)

    def test_earlyClientData(self):
        """
        Bytes the client's transport delivered while the server was being
        connected to go first once it is.
        """
        client = self.lb.client()
        client.send(b"early")
        server = self.lb.accept()
        self.assertEqual(server.received(), b"early")

    def test_balanced(self):
        """
        Connections are spread by the pool's balancer.
        """
        self.lb.client(IPv4Address("TCP", "192.0.2.7", 1))
        self.lb.client(IPv4Address("TCP", "192.0.2.7", 2))
        self.assertEqual(self.lb.pending(), [("10.0.0.1", 9001), ("10.0.0.2", 9002)])

    def test_ipHash(self):
        """
        ip_hash sends every connection of one client address to one server.
        """
        self.lb = MemoryStream(balance="ip_hash")
        for port in range(5):
            self.lb.client(IPv4Address("TCP", "192.0.2.7", port))
        self.assertEqual(len(set(self.lb.pending())), 1)

    def test_failover(self):
        """
        A server that refuses is marked failed and the next one is tried.
        """
        client = self.lb.client()
        self.lb.refuse()
        self.assertEqual(self.servers[0].active, 0)
        self.assertEqual(self.servers[0].health.state, "down")
        self.assertEqual(self.lb.pending(), [("10.0.0.2", 9002)])
        server = self.lb.accept()
        client.send(b"x")
        self.assertEqual(server.received(), b"x")
        self.assertEqual(self.servers[1].active, 1)
        history = self.lb.pool.monitor.history
        self.assertIn("connection refused", history[-1].reason)

    def test_connectTimeout(self):
        """
        A connect that takes longer than connect_timeout counts as a failure
        too.
        """
        self.lb = MemoryStream(connect_timeout=3.0)
        client = self.lb.client()
        self.lb.reactor.advance(3)
        self.assertEqual(self.lb.pending(), [("10.0.0.2", 9002)])
        self.assertEqual(self.lb.pool.servers[0].health.state, "down")
        self.assertIn("timed out", self.lb.pool.monitor.history[-1].reason)
        self.assertTrue(client.connected)

    def test_noServerClosesClient(self):
        """
        When every server has failed, the client's connection is closed.
        """
        client = self.lb.client()
        self.lb.refuse()
        self.lb.refuse()
        self.assertFalse(client.connected)
        self.assertEqual([s.active for s in self.servers], [0, 0])
        self.assertEqual(self.lb.factory.connections, 0)
        # And the next client finds none at all.
        other = self.lb.client()
        self.assertFalse(other.connected)
        self.assertEqual(self.lb.pending(), [])

    def test_tries(self):
        """
        tries bounds the servers one connection is tried on.
        """
        self.lb = MemoryStream(tries=1)
        client = self.lb.client()
        self.lb.refuse()
        self.assertFalse(client.connected)
        self.assertEqual(self.lb.pending(), [])

    def test_retryTimeout(self):
        """
        retry_timeout bounds the failover of a connection as it does an
        HTTP request's: once it has passed since the first attempt, a
        failed connect closes the client's connection instead of trying the
        next server.
        """
        self.lb = MemoryStream(
            servers=("10.0.0.1:9001", "10.0.0.2:9002", "10.0.0.3:9003"),
            connect_timeout=3.0,
            retry_timeout=5.0,
        )
        client = self.lb.client()
        self.lb.reactor.advance(3)
        self.assertEqual(self.lb.pending(), [("10.0.0.2", 9002)])
        self.lb.reactor.advance(3)
        self.assertFalse(client.connected)
        self.assertEqual(self.lb.pending(), [])
        self.assertEqual([s.active for s in self.lb.pool.servers], [0, 0, 0])
        self.assertEqual(self.lb.factory.connections, 0)

    def test_attemptRecords(self):
        """
        A connection's attempts are recorded: each server tried, how the
        attempt ended and why, and why no further one was made.
        """
        self.lb = MemoryStream(tries=2)
        client = self.lb.client()
        session = client.protocol.session
        self.lb.refuse()
        self.lb.refuse()
        record = session.attempts.record()
        self.assertEqual(
            [(a.server, a.outcome, a.cause) for a in record.attempts],
            [
                ("10.0.0.1:9001", Outcome.FAILED, "connect failed: connection refused"),
                ("10.0.0.2:9002", Outcome.FAILED, "connect failed: connection refused"),
            ],
        )
        self.assertEqual(record.stopped, StopReason.TRIES)

    def test_clientGoneWhileConnecting(self):
        """
        A client that goes while its server is connected to stops the
        attempt, which does not count against the server.
        """
        client = self.lb.client()
        client.close()
        self.assertEqual(self.lb.pending(), [])
        self.assertEqual(self.servers[0].active, 0)
        self.assertEqual(self.servers[0].health.state, "up")
        self.assertEqual(self.lb.factory.connections, 0)

    def test_clientCloseClosesServer(self):
        client = self.lb.client()
        server = self.lb.accept()
        client.close()
        self.assertFalse(server.connected)
        self.assertEqual(self.servers[0].active, 0)
        self.assertEqual(self.lb.factory.connections, 0)

    def test_serverCloseClosesClient(self):
        client = self.lb.client()
        server = self.lb.accept()
        server.send(b"last words")
        server.close()
        self.assertEqual(client.received(), b"last words")
        self.assertFalse(client.connected)
        self.assertEqual(self.servers[0].active, 0)

    def test_resetEitherSide(self):
        client = self.lb.client()
        server = self.lb.accept()
        server.reset()
        self.assertFalse(client.connected)
        client = self.lb.client()
        server = self.lb.accept()
        client.reset()
        self.assertFalse(server.connected)
        self.assertEqual([s.active for s in self.servers], [0, 0])

    def test_idleTimeout(self):
        """
        idle_timeout without a byte either way closes both sides; traffic
        either way keeps them open.
        """
        self.lb = MemoryStream(stream=StreamConfig("s", ["tcp:0"], "tcp", idle_timeout=10.0))
        client = self.lb.client()
        server = self.lb.accept()
        self.lb.reactor.advance(9)
        client.send(b"a")
        self.lb.reactor.advance(9)
        server.send(b"b")
        self.lb.reactor.advance(9)
        self.assertTrue(client.connected)
        self.assertTrue(server.connected)
        self.lb.reactor.advance(1)
        self.assertFalse(client.connected)
        self.assertFalse(server.connected)
        self.assertEqual(self.lb.pool.servers[0].active, 0)

    def test_backPressure(self):
        """
        When one side's transport cannot take more, reading from the other
        pauses, both ways.
        """
        client = self.lb.client()
        server = self.lb.accept()
        client.transport.producer.pauseProducing()
        self.assertEqual(server.transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(server.transport.producerState, "producing")
        server.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        server.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_proxyProtocolV1First(self):
        self.lb = MemoryStream(stream=StreamConfig("s", ["tcp:0"], "tcp", proxy_protocol="v1"))
        client = self.lb.client()
        client.send(b"data")
        server = self.lb.accept()
        self.assertEqual(
            server.received(), b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7000\r\ndata"
        )

    def test_proxyProtocolV2First(self):
        self.lb = MemoryStream(stream=StreamConfig("s", ["tcp:0"], "tcp", proxy_protocol="v2"))
        client = self.lb.client()
        server = self.lb.accept()
        client.send(b"data")
        received = server.received()
        self.assertTrue(received.startswith(SIGNATURE))
        info, rest = V2Parser().feed(received)
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40000))
        self.assertEqual(rest, b"data")

    def test_closeAll(self):
        """
        Closing the factory's connections closes both sides of each.
        """
        joined = self.lb.client()
        server = self.lb.accept()
        connecting = self.lb.client(IPv4Address("TCP", "192.0.2.8", 1))
        self.lb.factory.closeAll()
        self.assertFalse(joined.connected)
        self.assertFalse(server.connected)
        self.assertFalse(connecting.connected)
        self.assertEqual([s.active for s in self.servers], [0, 0])

    def test_unknownProxyProtocol(self):
        self.assertRaises(
            ValueError,
            StreamProxyFactory,
            StreamConfig("s", ["tcp:0"], "tcp", proxy_protocol="v3"),
            self.lb.pool,
            self.lb.reactor,
        )

    def test_requestView(self):
        """
        What balancers see of a connection: its client's address (an
        IPv4-mapped IPv6 one as IPv4), and no headers, cookies or URI.
        """
        client = self.lb.client(IPv6Address("TCP", "::ffff:192.0.2.9", 40000))
        view = client.protocol.session.attempts.view
        self.assertEqual(view.clientAddress, "192.0.2.9")
        self.assertFalse(view.secure)
        self.assertEqual((view.headers, view.target, view.path), ((), b"", b""))
        self.assertIsNone(view.cookie(b"sid"))


class TunnelTests(SynchronousTestCase):
    """
    The tunnel on its own.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.closed = []
        self.tunnel = Tunnel(self.clock, 60.0, self.closed.append)
        self.client = StringTransportWithDisconnection()
        self.server = StringTransportWithDisconnection()
        self.client.protocol = _Side(self.tunnel.clientLost)
        self.server.protocol = _Side(self.tunnel.serverLost)
        self.tunnel.join(self.client, self.server)

    def test_counts(self):
        self.tunnel.fromClient(b"abc")
        self.tunnel.fromServer(b"de")
        self.assertEqual((self.tunnel.toServer, self.tunnel.toClient), (3, 2))
        self.assertEqual((self.server.value(), self.client.value()), (b"abc", b"de"))

    def test_closedOnceBothGone(self):
        """
        The tunnel ends (onClosed, C{closed}) once both sides are gone, with
        the reason; later data is dropped.
        """
        self.client.loseConnection()
        self.assertEqual(self.closed, [self.tunnel])
        self.assertEqual(self.tunnel.closeReason, "client closed the connection")
        self.assertTrue(self.tunnel.closed.called)
        self.tunnel.fromServer(b"late")
        self.assertEqual(self.client.value(), b"")

    def test_stuckSideAborted(self):
        """
        A side that does not close once the other has (its peer does not
        read what is still to be sent) is dropped after a grace period.
        """
        server = _Stuck()
        tunnel = Tunnel(self.clock, 60.0, self.closed.append)
        client = StringTransportWithDisconnection()
        client.protocol = _Side(tunnel.clientLost)
        server.lost = tunnel.serverLost
        tunnel.join(client, server)
        client.loseConnection()
        self.assertEqual(self.closed, [])
        self.clock.advance(30)
        self.assertEqual(self.closed, [tunnel])
        self.assertTrue(server.aborted)


class _Side(Protocol):
    def __init__(self, lost):
        self.lost = lost

    def connectionLost(self, reason=None):
        self.lost(reason)


class _Stuck(StringTransportWithDisconnection):
    """
    A transport whose clean close never completes.
    """

    aborted = False

    def loseConnection(self):
        self.disconnecting = False

    def abortConnection(self):
        self.aborted = True
        self.connected = False
        self.lost(Failure(ConnectionLost()))


class ProxyProtocolTests(SynchronousTestCase):
    """
    The PROXY headers, read back by Twisted's own parsers.
    """

    def test_v1TCP4(self):
        header = v1Header(CLIENT, LISTENER)
        self.assertEqual(header, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7000\r\n")
        info, rest = V1Parser().feed(header + b"after")
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40000))
        self.assertEqual(
            (info.destination.host, info.destination.port), ("198.51.100.1", 7000)
        )
        self.assertIsInstance(info.source, IPv4Address)
        self.assertEqual(rest, b"after")

    def test_v1TCP6(self):
        source = IPv6Address("TCP", "2001:db8::7", 40000)
        destination = IPv6Address("TCP", "2001:db8::1", 443)
        header = v1Header(source, destination)
        self.assertEqual(header, b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n")
        info, rest = V1Parser().feed(header)
        self.assertIsInstance(info.source, IPv6Address)
        self.assertEqual((info.source.host, info.source.port), ("2001:db8::7", 40000))
        self.assertEqual(info.destination.port, 443)

    def test_v1Unknown(self):
        """
        Not TCP addresses: C{PROXY UNKNOWN}, as the specification writes it
        (Twisted's parser wants something after UNKNOWN, which the
        specification says a receiver ignores).
        """
        source = UNIXAddress(b"/tmp/sock")
        self.assertEqual(v1Header(source, source), b"PROXY UNKNOWN\r\n")
        info, rest = V1Parser().feed(b"PROXY UNKNOWN ignored\r\nx")
        self.assertIsNone(info.source)

    def test_mappedAddresses(self):
        """
        A dual-stack listener's IPv4 client (IPv4-mapped on both ends) is
        sent as IPv4; an IPv4 address beside an IPv6 one is mapped.
        """
        source = IPv6Address("TCP", "::ffff:192.0.2.7", 40000)
        destination = IPv6Address("TCP", "::ffff:198.51.100.1", 7000)
        self.assertEqual(
            v1Header(source, destination),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7000\r\n",
        )
        mixed = v1Header(CLIENT, IPv6Address("TCP", "2001:db8::1", 7000))
        self.assertEqual(mixed, b"PROXY TCP6 ::ffff:c000:207 2001:db8::1 40000 7000\r\n")
        scoped = v1Header(
            IPv6Address("TCP", "fe80::7%eth0", 1), IPv6Address("TCP", "fe80::1%eth0", 2)
        )
        self.assertEqual(scoped, b"PROXY TCP6 fe80::7 fe80::1 1 2\r\n")

    def test_v2TCP4(self):
        header = v2Header(CLIENT, LISTENER)
        self.assertEqual(header[:12], SIGNATURE)
        self.assertEqual(header[12:16], b"\x21\x11\x00\x0c")
        self.assertEqual(len(header), 16 + 12)
        info, rest = V2Parser().feed(header + b"after")
        self.assertIsInstance(info.source, IPv4Address)
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40000))
        self.assertEqual(
            (info.destination.host, info.destination.port), ("198.51.100.1", 7000)
        )
        self.assertEqual(rest, b"after")

    def test_v2TCP6(self):
        source = IPv6Address("TCP", "2001:db8::7", 40000)
        destination = IPv6Address("TCP", "2001:db8::1", 443)
        header = v2Header(source, destination)
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        info, rest = V2Parser().feed(header)
        self.assertIsInstance(info.source, IPv6Address)
        self.assertEqual((info.source.port, info.destination.port), (40000, 443))
        self.assertEqual(ip_address(info.source.host), ip_address("2001:db8::7"))
        self.assertEqual(ip_address(info.destination.host), ip_address("2001:db8::1"))

    def test_v2Local(self):
        source = UNIXAddress(b"/tmp/sock")
        header = v2Header(source, source)
        self.assertEqual(header, SIGNATURE + b"\x20\x00\x00\x00")
        info, rest = V2Parser().feed(header + b"x")
        self.assertIsNone(info.source)
        self.assertEqual(rest, b"x")


class TCPProbeTests(SynchronousTestCase):
    """
    The TCP health probe.
    """

    def setUp(self):
        self.lb = MemoryStream()
        self.server = self.lb.pool.servers[0]

    def test_chosenByType(self):
        reactor = MemoryReactorClock()
        pool = _buildPool(
            UpstreamConfig(
                "u",
                [ServerAddress("10.0.0.1", 1)],
                health_check=HealthCheckConfig(type="tcp"),
            ),
            reactor,
        )
        self.assertIsInstance(pool.monitor.probe, TCPProbe)
        monitor = HealthMonitor(HealthLog("u", reactor), reactor, pool.servers, HealthCheckConfig())
        self.assertIsInstance(monitor.probe, HTTPProbe)

    def test_connectedIsHealthy(self):
        results = []
        TCPProbe(self.lb.reactor).check(self.server).addBoth(results.append)
        self.assertEqual(self.lb.pending(), [("10.0.0.1", 9001)])
        peer = self.lb.accept()
        self.assertEqual(results, [None])
        self.assertFalse(peer.transport.connected)
        self.assertEqual(peer.transport.value(), b"")

    def test_refusedIsUnhealthy(self):
        results = []
        TCPProbe(self.lb.reactor).check(self.server).addBoth(results.append)
        self.lb.refuse()
        self.assertEqual(results[0].getErrorMessage(), "connect failed: connection refused")

    def test_cancelled(self):
        results = []
        probe = TCPProbe(self.lb.reactor).check(self.server)
        probe.addBoth(results.append)
        probe.cancel()
        self.assertTrue(results[0].check(CancelledError))

    def test_monitorMarksDownAndUp(self):
        """
        With C{type = tcp}, fall refused connections take a server down and
        rise accepted ones bring it back.
        """
        stream = MemoryStream(
            ["10.0.0.1:9001"],
            health_check=HealthCheckConfig(type="tcp", interval=1.0, fall=2, rise=1),
        )
        monitor = stream.pool.monitor
        monitor.start()
        self.addCleanup(monitor.stop)
        server = stream.pool.servers[0]
        for _ in range(2):
            stream.reactor.advance(1.2)
            stream.refuse()
        self.assertEqual(server.health.state, "down")
        stream.reactor.advance(1.2)
        stream.accept()
        self.assertEqual(server.health.state, "up")


# Over real sockets.


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class SayPeer(Protocol):
    """
    Says who it thinks its peer is (what the PROXY header told it), then
    echoes.
    """


    told = False

    def dataReceived(self, data):
        # The wrapper knows the peer once the header is in, before the data.
        if not self.told:
            self.told = True
            peer = self.transport.getPeer()
            self.transport.write(b"%s:%d\n" % (peer.host.encode(), peer.port))
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self, expected):
        self.expected = expected
        self.data = []
        self.size = 0
        self.done = Deferred()
        self.closed = Deferred()

    def dataReceived(self, data):
        self.data.append(data)
        self.size += len(data)
        if self.size >= self.expected and not self.done.called:
            self.done.callback(b"".join(self.data))

    def connectionLost(self, reason):
        self.reason = reason
        self.closed.callback(None)


class EndToEndStreamTests(TestCase):
    @inlineCallbacks
    def startProxy(self, backendFactory, proxyProtocol=None, wrap=lambda e: e):
        backendPort = yield wrap(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")).listen(
            backendFactory
        )
        self.backendPort = backendPort
        self.addCleanup(self._stopBackend)
        upstream = UpstreamConfig(
            "echo", [ServerAddress("127.0.0.1", backendPort.getHost().port)]
        )
        pool = _buildPool(upstream, reactor)
        config = StreamConfig("echo", ["tcp:0"], "echo", proxy_protocol=proxyProtocol)
        self.factory = StreamProxyFactory(config, pool, reactor)
        self.addCleanup(self.factory.closeAll)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(port.stopListening)
        self.pool = pool
        return port.getHost().port

    @inlineCallbacks
    def test_echo(self):
        port = yield self.startProxy(Factory.forProtocol(Echo))
        client = Collect(5)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(b"hello")
        data = yield client.done
        self.assertEqual(data, b"hello")
        self.assertEqual(self.pool.servers[0].active, 1)
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_largeTransfer(self):
        """
        4 MiB, more than socket buffers hold, come back intact.
        """
        port = yield self.startProxy(Factory.forProtocol(Echo))
        payload = bytes(range(256)) * (4 * MiB // 256)
        client = Collect(len(payload))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(payload)
        data = yield client.done
        self.assertEqual(len(data), len(payload))
        self.assertEqual(hashlib.sha256(data).digest(), hashlib.sha256(payload).digest())
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_backendCloses(self):
        """
        A backend that closes closes the client's connection.
        """

        class Bye(Protocol):
            def connectionMade(self):
                self.transport.write(b"bye")
                self.transport.loseConnection()

        port = yield self.startProxy(Factory.forProtocol(Bye))
        client = Collect(3)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.closed
        self.assertEqual(b"".join(client.data), b"bye")
        self.assertTrue(client.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_noBackend(self):
        """
        When the only server refuses, the client's connection is closed; the
        server is not marked down, being the only one (as in nginx).
        """
        port = yield self.startProxy(Factory.forProtocol(Echo))
        backend = self.pool.servers[0].address
        # Take the backend away: stop listening, so its port refuses.
        yield self._stopBackend()
        client = Collect(1)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.closed
        self.assertEqual(client.data, [])
        self.assertEqual(self.pool.servers[0].health.state, "up")
        self.assertEqual(backend, self.pool.servers[0].address)

    def _stopBackend(self):
        port, self.backendPort = self.backendPort, None
        if port is not None:
            return port.stopListening()

    @inlineCallbacks
    def _checkProxyProtocol(self, version):
        port = yield self.startProxy(
            Factory.forProtocol(SayPeer), proxyProtocol=version, wrap=proxyEndpoint
        )
        client = Collect(1)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        local = client.transport.getHost()
        expected = b"127.0.0.1:%d\n" % (local.port,)
        client.expected = len(expected) + 4
        client.transport.write(b"ping")
        data = yield client.done
        self.assertEqual(data, expected + b"ping")
        client.transport.loseConnection()
        yield client.closed

    def test_proxyProtocolV1(self):
        """
        The backend, behind Twisted's PROXY protocol endpoint, sees the real
        client's address (v1).
        """
        return self._checkProxyProtocol("v1")

    def test_proxyProtocolV2(self):
        """
        The same, with a v2 header.
        """
        return self._checkProxyProtocol("v2")
