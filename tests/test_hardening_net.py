"""
Robustness of selection, health, listeners and TLS: the proxy's own
shortages are not held against servers, a lone server is never marked
unavailable by failures, listeners queue as many connections as nginx's, and
TLS clients that offer only C{http/1.0} (or an unknown protocol) by ALPN are
served.
"""

import errno
import os
import resource
import socket
import struct
import sys

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionRefusedError,
    getConnectError,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from manualb.config import HealthCheckConfig, ServerAddress, ServerConfig
from manualb.configfile import parseConfig
from manualb.handoff import localConnectProblem
from manualb.health import DOWN, UP
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, balancerConfig
from tests.test_streams import MemoryStream

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
A = ("10.0.0.1", 8001)
B = ("10.0.0.2", 8002)

EMFILE = ConnectBindError(errno.EMFILE, os.strerror(errno.EMFILE))


def balancer(*servers: ServerConfig, **upstream) -> MemoryBalancer:
    """
    A memory balancer over C{servers}, with C{upstream} fields set on the
    pool.
    """
    config = balancerConfig(["10.9.9.9:1"])
    pool = attrs.evolve(config.upstreams["backends"], servers=servers, **upstream)
    return MemoryBalancer(attrs.evolve(config, upstreams={"backends": pool}))


def server(address, **options) -> ServerConfig:
    return ServerConfig(ServerAddress(*address), **options)


def failConnection(lb: MemoryBalancer, reason: Exception, index: int = 0) -> None:
    """
    Let a pending backend connection of C{lb} fail with C{reason}, as
    Twisted's connector reports it.
    """
    host, port, factory, timeout, bindAddress = lb._takeAttempt(index)
    factory.clientConnectionFailed(None, Failure(reason))


class LocalConnectProblemTests(SynchronousTestCase):
    """
    The connect failures that are the proxy's own shortage are told apart
    from the server's, in each form Twisted gives them.
    """

    def test_socketCreation(self):
        """
        C{socket()} failing with EMFILE or ENFILE: Twisted's
        L{ConnectBindError}, with the errno in C{osError}.
        """
        self.assertIn("out of file descriptors", localConnectProblem(Failure(EMFILE)))
        self.assertIn("EMFILE", localConnectProblem(Failure(EMFILE)))
        nfile = ConnectBindError(errno.ENFILE, os.strerror(errno.ENFILE))
        self.assertIn("ENFILE", localConnectProblem(Failure(nfile)))

    def test_connect(self):
        """
        C{connect()} failing with ENOBUFS or EADDRNOTAVAIL (no free local
        port): L{getConnectError} of the errno.
        """
        for number in (errno.ENOBUFS, errno.EADDRNOTAVAIL):
            reason = getConnectError((number, os.strerror(number)))
            self.assertIsInstance(reason, ConnectError)
            self.assertIn(errno.errorcode[number], localConnectProblem(Failure(reason)))

    def test_rawOSError(self):
        """
        An endpoint that lets the C{OSError} itself through.
        """
        reason = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        self.assertIn("EMFILE", localConnectProblem(Failure(reason)))

    def test_serversFault(self):
        """
        A refused connection, a timeout or an unreachable host is the
        server's failure.
        """
        self.assertIsNone(localConnectProblem(Failure(ConnectionRefusedError())))
        for number in (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ECONNRESET):
            reason = getConnectError((number, os.strerror(number)))
            self.assertIsNone(localConnectProblem(Failure(reason)))
        self.assertIsNone(localConnectProblem(Failure(ConnectError(string="x"))))


class LocalShortageTests(SynchronousTestCase):
    """
    A connect that fails for want of the proxy's own resources is answered
    503 at once, is not sent to another server, and counts nothing against
    the server.
    """

    def test_emfileAnswered503(self):
        lb = balancer(server(A), server(B))
        a, b = lb.balancer.pools["backends"].servers
        client = lb.client()
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        failConnection(lb, EMFILE)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Service Unavailable"), response)
        # The reason is in the log; the page shows the request id.
        self.assertNotIn(b"out of file descriptors", response)
        self.assertIn(b"Request id: ", response)
        self.assertEqual(lb.pendingConnections(), [], "not tried on the next server")
        self.assertEqual((a.health.state, a.health._fails), (UP, 0))
        self.assertTrue(a.available())
        self.assertEqual(a.active, 0)
        self.assertRegex(lb.accessLog.getvalue(), rb'" 503 ')
        # The server takes the next request as if nothing had happened.
        client.send(GET)
        self.assertEqual(len(lb.pendingConnections()), 1)
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))

    def test_emfileOnTestRequest(self):
        """
        A server on trial whose test request cannot be sent for the proxy's
        own shortage stays on trial: the next request tests it.
        """
        lb = balancer(server(A), server(B, backup=True))
        a = lb.balancer.pools["backends"].servers[0]
        a.health.requestFailed("connection refused")
        lb.reactor.advance(10)
        client = lb.client()
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        failConnection(lb, EMFILE)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503"))
        self.assertTrue(a.available())
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])

    def test_streamClosedNotMarked(self):
        """
        A stream's connection is closed: no other server is tried, and the
        server is not marked.
        """
        lb = MemoryStream()
        first = lb.pool.servers[0]
        client = lb.client()
        self.assertEqual(len(lb.pending()), 1)
        connector, (host, port, factory, timeout, bind) = lb._take(0)
        factory.clientConnectionFailed(connector, Failure(EMFILE))
        self.assertEqual(lb.pending(), [])
        self.assertFalse(client.transport.connected)
        self.assertEqual(lb.factory.connections, 0)
        for each in lb.pool.servers:
            self.assertEqual((each.health.state, each.health._fails, each.active), (UP, 0, 0))
        self.assertTrue(first.available())

    def probing(self, type):
        check = HealthCheckConfig(type=type, interval=2.0, timeout=1.0, fall=1)
        lb = balancer(server(A), server(B), health_check=check)
        return lb, lb.balancer.pools["backends"]

    def test_probeNotCounted(self):
        """
        A probe that cannot connect for the proxy's own shortage neither
        passes nor fails: with C{fall=1}, the server stays up.
        """
        for type in ("http", "tcp"):
            lb, pool = self.probing(type)
            lb.reactor.advance(2.2)
            while lb.pendingConnections():
                failConnection(lb, EMFILE)
            for each in pool.servers:
                self.assertEqual(each.health.state, UP, type)
                self.assertEqual(each.health._probeFails, 0, type)
            self.assertEqual(list(pool.monitor.history), [])
            # Probing goes on.
            lb.reactor.advance(2.2)
            self.assertEqual(len(lb.pendingConnections()), 2)
            lb.balancer.close()


class SingleServerTests(SynchronousTestCase):
    """
    As in nginx, the only server of a pool is never made unavailable by
    failures; a lone primary with backups is.
    """

    def test_singleServerNeverMarked(self):
        lb = balancer(server(A, max_fails=1, fail_timeout=10.0))
        a = lb.balancer.pools["backends"].servers[0]
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertEqual(a.health.state, UP)
        self.assertTrue(a.available())
        # The server is back at once: the next request reaches it, with no
        # 503 for fail_timeout.
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(list(lb.balancer.pools["backends"].monitor.history), [])
        self.flushLoggedErrors()

    def test_manyFailures(self):
        lb = balancer(server(A, max_fails=3))
        a = lb.balancer.pools["backends"].servers[0]
        for _ in range(10):
            a.health.requestFailed("status 502")
        self.assertTrue(a.available())
        self.assertEqual(a.health.state, UP)

    def test_primaryWithBackupMarked(self):
        """
        With a backup, the lone primary is marked as any server, and the
        backup serves meanwhile, as in nginx.
        """
        lb = balancer(server(A), server(B, backup=True))
        a = lb.balancer.pools["backends"].servers[0]
        self.assertFalse(lb.balancer.pools["backends"].single)
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        self.assertEqual(lb.pendingConnections(), [B])
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(a.health.state, DOWN)
        self.flushLoggedErrors()

    def test_probesStillTakeItDown(self):
        """
        Active probes take even a lone server down (as HAProxy's checks do);
        failures on real traffic do not.
        """
        check = HealthCheckConfig(path="/", interval=2.0, timeout=1.0, rise=1, fall=2)
        lb = balancer(server(A), health_check=check)
        a = lb.balancer.pools["backends"].servers[0]
        a.health.requestFailed("connection refused")
        self.assertEqual(a.health.state, UP)
        for _ in range(2):
            lb.reactor.advance(2.2)
            lb.refuseConnection()
        self.assertEqual(a.health.state, DOWN)
        client = lb.client()
        client.send(GET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503"))
        lb.reactor.advance(2.2)
        lb.acceptConnection().send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(a.health.state, UP)
        lb.balancer.close()


class _Response(Protocol):
    """
    Collects what the proxy sends until it closes.
    """

    def __init__(self):
        self.data = b""
        self.closed = Deferred()
        self.first = Deferred()

    def dataReceived(self, data):
        self.data += data
        if not self.first.called:
            self.first.callback(None)

    def connectionLost(self, reason=None):
        self.closed.callback(self.data)


class RealEMFILETests(TestCase):
    """
    With the process really out of file descriptors, the connect to the
    backend fails as Twisted reports it, and the client gets a 503 without
    the server being marked.
    """

    @inlineCallbacks
    def test_outOfDescriptors(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("needs Linux's RLIMIT_NOFILE semantics")
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "[upstream u]\nservers =\n    127.0.0.1:1\n    127.0.0.1:2\n"
            "[route r]\npath = /\nupstream = u\n"
        )
        lb = LoadBalancer(config, reactor)
        self.addCleanup(lb.close)
        port = yield lb.endpoint("tcp:0:interface=127.0.0.1").listen(lb.site)
        self.addCleanup(port.stopListening)
        client = _Response()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        # Once manualb has accepted the connection (it answers the TRACE
        # itself), take every descriptor away: the lowest free one is the
        # limit.
        client.transport.write(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.first
        free = os.dup(0)
        os.close(free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        client.data = b""
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            response = yield client.closed
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Service Unavailable"), response)
        # The reason is in the log; the page shows the request id.
        self.assertNotIn(b"EMFILE", response)
        self.assertIn(b"Request id: ", response)
        for each in lb.pools["u"].servers:
            self.assertEqual((each.health.state, each.health._fails), (UP, 0))


_SACKED = 13
_TOTAL_RETRANS = 31


def _tcpInfo(sock) -> tuple:
    """
    The fields of a TCP socket's C{struct tcp_info} (Linux): eight bytes,
    then 32-bit fields, C{rto} at 8, C{sacked} at L{_SACKED}, and
    C{total_retrans} at L{_TOTAL_RETRANS}.
    """
    data = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack("8B24I", data[:104])


def _needTCPInfo():
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_INFO"):
        raise SkipTest("needs Linux's TCP_INFO")


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def listenQueueLimit(port) -> int:
    """
    The accept queue limit the kernel applies to a listening TCP port: for a
    listener, C{tcpi_sacked} is its C{sk_max_ack_backlog} (C{ss -ltn}'s
    Send-Q).
    """
    return _tcpInfo(port.socket)[_SACKED]


def totalRetransmits(sock) -> int:
    """
    How many segments a TCP socket had to send again, its SYN included.
    """
    return _tcpInfo(sock)[_TOTAL_RETRANS]


class WithBacklogTests(SynchronousTestCase):
    """
    L{withBacklog} gives every endpoint type that takes a backlog nginx's
    511, unless the string gives one.
    """

    def test_added(self):
        from manualb.entry import withBacklog

        for description in [
            "tcp:8080",
            "tcp:8080:interface=127.0.0.1",
            "tcp6:8080:interface=\\:\\:1",
            "unix:/run/lb.sock",
            "ssl:8443:privateKey=k.pem:certKey=c.pem",
            "sni:443",
            "SNI:443:interface=127.0.0.1",
        ]:
            self.assertEqual(withBacklog(description), description + ":backlog=511")
        self.assertEqual(withBacklog("tcp:80", 1024), "tcp:80:backlog=1024")

    def test_kept(self):
        from manualb.entry import withBacklog

        for description in [
            "tcp:8080:backlog=100",
            "sni:443:backlog=7:interface=127.0.0.1",
            "unix:/run/lb.sock:backlog=64",
            # Given positionally.
            "tcp:8080:127.0.0.1:100",
            "tcp6:8080:100",
            "unix:/run/lb.sock:660:100",
            # Types that may not take one.
            "systemd:domain=INET:index=0",
            "onion:443",
            # A final lone backslash would escape the colon added.
            "tcp:8080:interface=x\\",
        ]:
            self.assertEqual(withBacklog(description), description)

    def test_configCheck(self):
        """
        The configuration check takes C{backlog=N} on every kind of
        endpoint, and refuses a bad one.
        """
        from manualb.config import ConfigError

        directory = os.path.abspath(self.mktemp())
        from manualb.tlstesting import makeCA, writeTLSFiles

        certificate, key = writeTLSFiles(directory, makeCA("test CA"), ["www.example.com"])
        tls = f"[tls]\ncertificates = www.example.com {certificate} {key}\n"
        base = "[upstream u]\nservers = 10.0.0.1:80\n[route r]\npath = /\nupstream = u\n"
        for listen in ["tcp:0:backlog=1024", "sni:0:backlog=1024", "unix:/tmp/x.sock:backlog=8"]:
            config = parseConfig(f"[manualb]\nlisten = {listen}\n" + tls + base)
            self.assertEqual(config.listeners[0].listen, (listen,))
        for listen in ["tcp:0:backlog=many", "sni:0:backlog=0", "sni:0:backlog=x"]:
            self.assertRaises(
                ConfigError, parseConfig, f"[manualb]\nlisten = {listen}\n" + tls + base
            )


class BacklogTests(TestCase):
    """
    Every listener manualb opens queues 511 connections (nginx's backlog),
    or what its endpoint string's C{backlog=} says.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        from manualb.tlstesting import makeCA, writeCA, writeTLSFiles

        self.ca = makeCA("manualb backlog test CA")
        self.cafile = writeCA(self.directory, self.ca)
        self.certificate, self.key = writeTLSFiles(
            self.directory, self.ca, ["www.example.com"]
        )

    def balancer(self, listen=("tcp:0:interface=127.0.0.1",)) -> LoadBalancer:
        lines = ["[manualb]", "listen ="] + ["    " + each for each in listen]
        lines += ["access_log = off", "[tls]"]
        lines += [f"certificates = www.example.com {self.certificate} {self.key}"]
        lines += ["[upstream u]", "servers = 127.0.0.1:1", "[route r]", "path = /"]
        lines += ["upstream = u"]
        config = parseConfig("\n".join(lines) + "\n", os.path.join(self.directory, "lb.ini"))
        lb = LoadBalancer(config, reactor)
        self.addCleanup(lb.close)
        return lb

    @inlineCallbacks
    def listen(self, lb, description, factory=None):
        port = yield lb.endpoint(description).listen(factory or lb.site)
        self.addCleanup(port.stopListening)
        return port

    def escaped(self, path):
        return path.replace(":", "\\:")

    @inlineCallbacks
    def test_everyKind(self):
        """
        C{tcp:}, C{tcp6:}, C{ssl:}, C{sni:} and C{unix:} listen with a
        backlog of 511, as the kernel confirms for TCP (C{min(511,
        somaxconn)}).
        """
        _needTCPInfo()
        ssl = "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
            self.escaped(self.key),
            self.escaped(self.certificate),
        )
        socketPath = os.path.join(self.directory, "lb.sock")
        descriptions = [
            "tcp:0:interface=127.0.0.1",
            "sni:0:interface=127.0.0.1",
            ssl,
            "unix:" + self.escaped(socketPath),
        ]
        if socket.has_ipv6:
            descriptions.append("tcp6:0:interface=\\:\\:1")
        lb = self.balancer(descriptions)
        expected = min(511, _somaxconn())
        for description in descriptions:
            try:
                port = yield self.listen(lb, description)
            except Exception:
                if description.startswith("tcp6"):
                    continue  # no IPv6 loopback here
                raise
            self.assertEqual(port.backlog, 511, description)
            if not description.startswith("unix"):
                self.assertEqual(listenQueueLimit(port), expected, description)

    @inlineCallbacks
    def test_given(self):
        """
        C{backlog=N} in the endpoint string is kept.
        """
        _needTCPInfo()
        lb = self.balancer(["tcp:0:interface=127.0.0.1:backlog=64", "sni:0:backlog=32"])
        port = yield self.listen(lb, "tcp:0:interface=127.0.0.1:backlog=64")
        self.assertEqual((port.backlog, listenQueueLimit(port)), (64, 64))
        port = yield self.listen(lb, "sni:0:interface=127.0.0.1:backlog=32")
        self.assertEqual((port.backlog, listenQueueLimit(port)), (32, 32))

    @inlineCallbacks
    def test_makeService(self):
        """
        The listeners makeService builds, HTTP and streams, get 511.
        """
        from manualb.service import makeService

        lb = self.balancer()
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "[stream s]\nlisten = tcp:0:interface=127.0.0.1:backlog=77\nupstream = u\n"
            "[stream t]\nlisten = tcp6:0:interface=\\:\\:1\nupstream = u\n"
            "[upstream u]\nservers = 127.0.0.1:1\n[route r]\npath = /\nupstream = u\n"
        )
        parent = makeService(config, reactor)
        self.addCleanup(parent.balancer.close)
        services = {service.name: service for service in parent if service.name}
        backlogs = {name: service.endpoint._backlog for name, service in services.items()}
        self.assertEqual(
            backlogs,
            {
                "tcp:0:interface=127.0.0.1": 511,
                "tcp:0:interface=127.0.0.1:backlog=77": 77,
                "tcp6:0:interface=\\:\\:1": 511,
            },
        )
        port = yield services["tcp:0:interface=127.0.0.1"].endpoint.listen(lb.site)
        self.addCleanup(port.stopListening)
        self.assertEqual(port.backlog, 511)

    @inlineCallbacks
    def test_burst(self):
        """
        300 clients connecting at once (all their connects are made before
        the proxy accepts any) are all queued by the kernel at the first
        try, and all answered: none of them had to send its SYN again, as
        those beyond a backlog of 50 would, 1 s and then 3 s later.
        """
        _needTCPInfo()
        lb = self.balancer()
        port = yield self.listen(lb, "tcp:0:interface=127.0.0.1")
        count = 300
        clients = [_Client() for _ in range(count)]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        # Each connect is started by the reactor in the same round (Twisted
        # calls connect() from callLater(0)), before the port reads again.
        connected = [connectProtocol(endpoint, client) for client in clients]
        for each in connected:
            yield each
        answers = []
        for client in clients:
            answers.append((yield client.closed))
        self.assertEqual(
            [answer[:len(b"HTTP/1.0 405")] for answer in answers],
            [b"HTTP/1.0 405"] * count,
        )
        retransmitted = [client.retransmits for client in clients if client.retransmits]
        self.assertEqual(retransmitted, [], "connects that needed their SYN sent again")

    test_burst.timeout = 60


class _Client(Protocol):
    """
    Sends a request manualb answers itself (C{TRACE}: 405) as soon as it is
    connected, after noting how many segments its connect had to send again.
    """

    retransmits = None

    def __init__(self):
        self.data = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.retransmits = totalRetransmits(self.transport.getHandle())
        self.transport.write(b"TRACE / HTTP/1.0\r\nHost: burst\r\n\r\n")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.closed.callback(self.data)


def _http10Exchange(port: int, cafile: str, alpn: list) -> tuple:
    """
    Handshake offering C{alpn}, then one C{GET / HTTP/1.0}; return the
    protocol chosen and the whole response.  Blocking: run it in a thread.
    """
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            tls.sendall(b"GET /x HTTP/1.0\r\nHost: www.example.com\r\n\r\n")
            response = b""
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                response += data
            return tls.selected_alpn_protocol(), response


class HTTP10OverTLSTests(TestCase):
    """
    A TLS client that offers only C{http/1.0} by ALPN (C{curl --http1.0}) is
    served, as by nginx, on C{ssl:} and C{sni:} listeners alike; one that
    offers only a protocol nobody speaks is served without ALPN.
    """

    @inlineCallbacks
    def setUp(self):
        from manualb.testing import NamedBackend, listenBackend, serverAddress
        from manualb.tlstesting import makeCA, writeCA, writeTLSFiles

        directory = os.path.abspath(self.mktemp())
        ca = makeCA("manualb ALPN test CA")
        self.cafile = writeCA(directory, ca)
        certificate, key = writeTLSFiles(directory, ca, ["www.example.com"])
        backendPort = yield listenBackend(reactor, NamedBackend("Backend A"))
        self.addCleanup(backendPort.stopListening)
        self.ssl = "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
            key.replace(":", "\\:"),
            certificate.replace(":", "\\:"),
        )
        self.sni = "sni:0:interface=127.0.0.1"
        config = parseConfig(
            f"[manualb]\nlisten =\n    {self.ssl}\n    {self.sni}\naccess_log = off\n"
            f"[tls]\ncertificates = www.example.com {certificate} {key}\n"
            f"[upstream u]\nservers = {serverAddress(backendPort)}\n"
            "[route r]\npath = /\nupstream = u\n",
            os.path.join(directory, "lb.ini"),
        )
        self.lb = LoadBalancer(config, reactor)
        self.addCleanup(self.lb.close)

    @inlineCallbacks
    def exchange(self, description, alpn):
        from twisted.internet.threads import deferToThread

        port = yield self.lb.endpoint(description).listen(self.lb.site)
        self.addCleanup(port.stopListening)
        result = yield deferToThread(
            _http10Exchange, port.getHost().port, self.cafile, alpn
        )
        return result

    @inlineCallbacks
    def check(self, description, alpn, expected):
        chosen, response = yield self.exchange(description, alpn)
        self.assertEqual(chosen, expected, description)
        self.assertTrue(response.startswith(b"HTTP/1.0 200 "), response[:100])
        self.assertTrue(response.endswith(b"\r\n\r\nBackend A\n"), response[-100:])

    def test_sslHTTP10(self):
        return self.check(self.ssl, ["http/1.0"], "http/1.0")

    def test_sniHTTP10(self):
        return self.check(self.sni, ["http/1.0"], "http/1.0")

    def test_sslUnknownProtocol(self):
        return self.check(self.ssl, ["spdy/3"], None)

    def test_sniUnknownProtocol(self):
        return self.check(self.sni, ["spdy/3"], None)

    @inlineCallbacks
    def test_preferences(self):
        """
        A client offering HTTP/1.1 and HTTP/1.0 gets HTTP/1.1, on both
        kinds.
        """
        for description in (self.ssl, self.sni):
            chosen, response = yield self.exchange(description, ["http/1.0", "http/1.1"])
            self.assertEqual(chosen, "http/1.1", description)

    @inlineCallbacks
    def test_sslStream(self):
        """
        An C{ssl:} stream listener, whose factory speaks no HTTP, serves a
        client offering C{h2} by ALPN without ALPN, rather than failing the
        handshake.
        """
        import ssl

        from twisted.internet.protocol import Factory
        from twisted.internet.threads import deferToThread

        from manualb.entry import serverEndpoint

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

        port = yield serverEndpoint(reactor, self.ssl).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)

        def exchange():
            context = ssl.create_default_context(cafile=self.cafile)
            context.set_alpn_protocols(["h2", "http/1.1"])
            address = ("127.0.0.1", port.getHost().port)
            with socket.create_connection(address, timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
                    tls.sendall(b"ping")
                    return tls.selected_alpn_protocol(), tls.recv(4)

        self.assertEqual((yield deferToThread(exchange)), (None, b"ping"))
