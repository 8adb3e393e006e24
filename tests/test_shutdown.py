"""
The graceful stop (L{manualb.service.LoadBalancer.stop}, what C{SIGTERM}
does): the listening ports close at once, the requests in flight finish and
are logged, idle connections close, and what outlasts C{shutdown_timeout}
is cut.
"""

import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

from manualb.configfile import parseConfig
from manualb.service import makeService
from manualb.tap import stopOnSignals
from manualb.testing import (
    MemoryBalancer,
    balancerConfig,
    listenBackend,
    responseBody,
    serverAddress,
)
from tests.test_http2 import REQUEST, ErrorCodes, MemoryClient
from tests.test_plugin import ROOT, TWISTD, Twistd

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


class HeldBackend(Resource):
    """
    A backend that answers only when the test says so (L{release}).

    @ivar held: The requests waiting for their answer.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.held = []
        self._waiting = []

    def render(self, request):
        self.held.append(request)
        for count, d in list(self._waiting):
            if len(self.held) >= count:
                self._waiting.remove((count, d))
                d.callback(None)
        return NOT_DONE_YET

    def arrived(self, count: int = 1) -> Deferred:
        """
        Fires once C{count} requests are held.
        """
        d = Deferred()
        if len(self.held) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
        return d

    def release(self) -> None:
        """
        Answer every request held: C{200 ok}.
        """
        held, self.held = self.held, []
        for request in held:
            request.setHeader(b"Content-Length", b"2")
            request.write(b"ok")
            request.finish()


class RawClient(Protocol):
    """
    Sends C{request} once connected and keeps what comes back.

    @ivar lost: Fires with everything received once the connection closes.
    """

    def __init__(self, request: bytes = GET):
        self.request = request
        self.data = b""
        self.lost = Deferred()
        self._waiting = []

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data
        for count, d in list(self._waiting):
            if self.data.count(b"\r\n\r\nok") >= count:
                self._waiting.remove((count, d))
                d.callback(self.data)

    def responses(self, count: int = 1) -> Deferred:
        """
        Fires once C{count} whole responses of L{HeldBackend} are in.
        """
        d = Deferred()
        if self.data.count(b"\r\n\r\nok") >= count:
            d.callback(self.data)
        else:
            self._waiting.append((count, d))
        return d

    def connectionLost(self, reason=None):
        self.lost.callback(self.data)


def _capturedLog(testCase) -> list:
    events = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _messages(events, prefix: str) -> list:
    from twisted.logger import formatEvent

    return [formatEvent(event) for event in events if formatEvent(event).startswith(prefix)]


class GracefulStopTests(TestCase):
    """
    The service's stop over real sockets on 127.0.0.1.
    """

    @inlineCallbacks
    def _serve(self, extra: str = ""):
        self.backend = HeldBackend()
        backendPort = yield listenBackend(reactor, self.backend)
        self.addCleanup(backendPort.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.accessLog = os.path.join(directory, "access.log")
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"access_log = {self.accessLog}\n{extra}"
            f"[upstream web]\nservers = {serverAddress(backendPort)}\n"
            "[route r]\npath = /\nupstream = web\n",
            "<test>",
        )
        service = self.service = makeService(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        # Cut whatever a failed test left open.
        self.addCleanup(service.balancer.close)
        [listening] = [child for child in service if child.name]
        ports = []
        listening._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        [port] = ports
        self.portNumber = port.getHost().port
        # What closes the port, once the service stops.
        self.portClosed = []
        stopListening = listening.stopService

        def stopService():
            d = stopListening()
            self.portClosed.append(d)
            return d

        listening.stopService = stopService

    def connect(self, request: bytes = GET) -> Deferred:
        client = RawClient(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.portNumber)
        return connectProtocol(endpoint, client).addCallback(lambda ignored: client)

    def logLines(self) -> list:
        with open(self.accessLog, "rb") as f:
            return f.read().splitlines()

    @inlineCallbacks
    def test_inFlightRequestFinishes(self):
        """
        A request in flight when the stop begins gets its whole response,
        with C{Connection: close}, and its access log line; the
        connection then closes, and the service's stop fires only after
        that.  An idle kept-alive client is closed at once, and new
        connections are refused.
        """
        yield self._serve()
        events = _capturedLog(self)
        idle = yield self.connect()
        yield self.backend.arrived()
        self.backend.release()
        yield idle.responses()
        busy = yield self.connect()
        yield self.backend.arrived()

        stopped = self.service.stopService()
        # The idle one goes at once.
        yield idle.lost
        [closing] = self.portClosed
        yield closing
        self.assertNoResult(stopped)
        refused = self.connect()
        yield self.assertFailure(refused, ConnectionRefusedError)
        self.assertNoResult(stopped)
        self.assertFalse(busy.lost.called)

        self.backend.release()
        data = yield busy.lost
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertIn(b"\r\nConnection: close\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\nok"), data)
        yield stopped
        lines = self.logLines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(b'"GET / HTTP/1.1" 200 2', lines[1])
        [started] = _messages(events, "Stopping: waiting")
        self.assertIn("for 1 requests in flight", started)
        [ended] = _messages(events, "Stopped: ")
        self.assertIn("the 1 requests in flight", ended)

    @inlineCallbacks
    def test_keptAliveClosesAfterResponse(self):
        """
        A kept-alive connection busy with its second request when the stop
        begins gets that response whole, then closes.
        """
        yield self._serve()
        client = yield self.connect(GET)
        yield self.backend.arrived()
        self.backend.release()
        yield client.responses()
        client.transport.write(GET)
        yield self.backend.arrived()
        stopped = self.service.stopService()
        self.assertFalse(client.lost.called)
        self.backend.release()
        data = yield client.lost
        self.assertEqual(data.count(b"HTTP/1.1 200 "), 2)
        self.assertTrue(data.endswith(b"\r\n\r\nok"))
        yield stopped

    @inlineCallbacks
    def test_underLoad(self):
        """
        Many clients with requests in flight when the stop begins all get
        their whole response, none fails, and each is logged.
        """
        count = 50
        yield self._serve()
        agent = Agent(reactor)
        url = b"http://127.0.0.1:%d/" % (self.portNumber,)
        responses = [agent.request(b"GET", url) for _ in range(count)]
        yield self.backend.arrived(count)
        stopped = self.service.stopService()
        self.backend.release()
        results = yield gatherResults(responses)
        bodies = yield gatherResults([responseBody(response) for response in results])
        self.assertEqual([response.code for response in results], [200] * count)
        self.assertEqual(bodies, [b"ok"] * count)
        yield stopped
        lines = self.logLines()
        self.assertEqual(len(lines), count)
        self.assertTrue(all(b'"GET / HTTP/1.1" 200 2' in line for line in lines))

    @inlineCallbacks
    def test_nothingInFlight(self):
        """
        With nothing in flight, the stop ends at once.
        """
        yield self._serve()
        events = _capturedLog(self)
        yield self.service.stopService()
        [ended] = _messages(events, "Stopped: ")
        self.assertIn("the 0 requests in flight", ended)


class TimeoutTests(SynchronousTestCase):
    """
    What outlasts C{shutdown_timeout} is cut then, by the balancer's clock.
    """

    def setUp(self):
        self.events = _capturedLog(self)
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:80"], accessLog="-", upstream="web")
        )
        # Readable after the stop, which closes the log.
        self.lb.accessLog.close = lambda: None

    def test_slowRequestAbortedAtTimeout(self):
        """
        A request still in flight at C{shutdown_timeout} is aborted then,
        logged (499), and the stop ends; the abort is logged once with the
        count.
        """
        lb = self.lb
        client = lb.client()
        client.send(GET)
        lb.flush()
        backend = lb.acceptConnection()
        lb.flush()
        self.assertIn(b"GET / HTTP/1.1", backend.received())
        stopped = lb.balancer.stop(5)
        lb.flush()
        self.assertNoResult(stopped)
        lb.advance(4.9)
        self.assertNoResult(stopped)
        self.assertTrue(client.connected)
        lb.advance(0.1)
        lb.flush()
        self.successResultOf(stopped)
        self.assertFalse(client.connected)
        self.assertIn(b'"GET / HTTP/1.1" 499 ', lb.accessLog.getvalue())
        [aborting] = _messages(self.events, "Stopping: shutdown_timeout")
        self.assertIn("(5s) passed; aborting the 1 connections", aborting)

    def test_defaultTimeout(self):
        """
        By default the stop waits C{shutdown_timeout} of the configuration
        (30 seconds unless set).
        """
        lb = self.lb
        self.assertEqual(lb.balancer.config.shutdown_timeout, 30.0)
        client = lb.client()
        client.send(GET)
        lb.flush()
        lb.acceptConnection()
        lb.flush()
        stopped = lb.balancer.stop()
        lb.advance(29)
        self.assertNoResult(stopped)
        lb.advance(1)
        self.successResultOf(stopped)
        self.assertFalse(client.connected)

    def test_closeDuringStop(self):
        """
        L{LoadBalancer.close} during a stop closes everything at once, and
        ends the stop too.
        """
        lb = self.lb
        client = lb.client()
        client.send(GET)
        lb.flush()
        lb.acceptConnection()
        lb.flush()
        stopped = lb.balancer.stop()
        closed = lb.close()
        self.successResultOf(closed)
        self.successResultOf(stopped)
        self.assertFalse(client.connected)
        self.assertEqual(_messages(self.events, "Stopping: shutdown_timeout"), [])

    def test_idleClosedAtOnce(self):
        """
        An idle client connection is closed as the stop begins, and the stop
        ends with it.
        """
        lb = self.lb
        client = lb.client()
        stopped = lb.balancer.stop()
        lb.flush()
        self.successResultOf(stopped)
        self.assertFalse(client.connected)

    def test_shutdownTimeoutKey(self):
        """
        C{[manualb] shutdown_timeout} is read as a duration.
        """
        config = parseConfig(
            "[manualb]\nlisten = tcp:0\nshutdown_timeout = 1m30s\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        self.assertEqual(config.shutdown_timeout, 90.0)


class HeldRecorder(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.held = []

    def render(self, request):
        self.held.append(request)
        return NOT_DONE_YET


class HTTP2StopTests(SynchronousTestCase):
    """
    An HTTP/2 connection stops with a GOAWAY naming its last stream; the
    streams in flight finish, new ones are refused.
    """

    def test_goawayThenFinish(self):
        client = MemoryClient()
        resource = client.server.site.resource = HeldRecorder()
        first = client.request()
        self.assertEqual(len(resource.held), 1)
        # One more stream that the client sends before it sees the GOAWAY.
        later = client.h2.get_next_available_stream_id()
        client.h2.send_headers(later, REQUEST, end_stream=True)
        pending = client.h2.data_to_send()
        self.assertEqual(client.server.drain(), 1)
        client.pump()
        goaway = client.goaway()
        self.assertIsNotNone(goaway)
        self.assertEqual(
            (goaway.last_stream_id, goaway.error_code), (first, ErrorCodes.NO_ERROR)
        )
        self.assertFalse(client.closed)
        client.send(pending)
        # It is refused, and never reaches the site.
        self.assertEqual(len(resource.held), 1)
        resets = [
            frame
            for frame in client.frames()
            if isinstance(frame, RstStreamFrame) and frame.stream_id == later
        ]
        self.assertEqual([frame.error_code for frame in resets], [ErrorCodes.REFUSED_STREAM])
        [request] = resource.held
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()
        client.pump()
        # h2's client state machine takes its GOAWAY as the end: read the
        # frames.
        frames = [frame for frame in client.frames() if frame.stream_id == first]
        [headers] = [frame for frame in frames if isinstance(frame, HeadersFrame)]
        self.assertIn((b":status", b"200"), client.h2.decoder.decode(headers.data, raw=True))
        data = [frame for frame in frames if isinstance(frame, DataFrame)]
        self.assertEqual(b"".join(frame.data for frame in data), b"ok")
        self.assertIn("END_STREAM", data[-1].flags)
        self.assertTrue(client.closed)
        goaways = [frame for frame in client.frames() if isinstance(frame, GoAwayFrame)]
        self.assertEqual([frame.last_stream_id for frame in goaways], [first, first])

    def test_idleClosesAtOnce(self):
        client = MemoryClient()
        self.assertEqual(client.server.drain(), 0)
        goaways = [f for f in client.frames() if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goaways], [ErrorCodes.NO_ERROR])
        self.assertTrue(client.closed)


class _StoppingTwistd(Twistd):
    """
    Also fires C{stopping} once the process logs that its stop began.
    """

    def __init__(self):
        super().__init__()
        self.stopping = Deferred()

    def outReceived(self, data):
        super().outReceived(data)
        if b"Stopping: waiting" in self.output and not self.stopping.called:
            self.stopping.callback(None)

    errReceived = outReceived


class TwistdStopTests(TestCase):
    @inlineCallbacks
    def test_sigtermDuringSlowRequest(self):
        """
        C{twistd -n manualb} sent C{SIGTERM} during a slow request delivers
        its response and logs it before it ends, cleanly.
        """
        backend = HeldBackend()
        backendPort = yield listenBackend(reactor, backend)
        self.addCleanup(backendPort.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "lb.ini")
        accessLog = os.path.join(directory, "access.log")
        with open(config, "w") as f:
            f.write(
                "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = %s\n"
                "[upstream pool]\nservers = %s\n"
                "[route default]\npath = /\nupstream = pool\n"
                % (accessLog, serverAddress(backendPort))
            )
        process = _StoppingTwistd()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + ["-n", "--pidfile=", "manualb", "--config", config],
            env=dict(os.environ),
            path=ROOT,
        )
        try:
            port = yield process.ready
            client = RawClient()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            yield backend.arrived()
            transport.signalProcess(signal.SIGTERM)
            yield process.stopping
            self.assertFalse(process.ended.called)
            backend.release()
            data = yield client.lost
        except BaseException:
            if not process.ended.called:
                transport.signalProcess(signal.SIGKILL)
            raise
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertTrue(data.endswith(b"\r\n\r\nok"), data)
        status = yield process.ended
        # A graceful stop ends with status 0, as nginx's quit does.
        self.assertEqual(status, (0, None), process.output)
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertTrue(re.search(rb"Stopped: the 1 requests in flight", process.output))
        with open(accessLog, "rb") as f:
            self.assertIn(b'"GET / HTTP/1.1" 200 2', f.read())


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Tunnel(Protocol):
    def __init__(self):
        self.echoed = Deferred()
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        echoed, self.echoed = self.echoed, Deferred()
        echoed.callback(data)

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class StreamStopTests(TestCase):
    @inlineCallbacks
    def test_streamTunnelEnds(self):
        """
        An open TCP stream tunnel is left to end by itself: the stop waits
        for it, and ends once the client closes it.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        echoPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_Echo)
        )
        self.addCleanup(echoPort.stopListening)
        config = parseConfig(
            "[stream echo]\nlisten = tcp:interface=127.0.0.1:port=0\nupstream = echo\n"
            f"[upstream echo]\nservers = {serverAddress(echoPort)}\n",
            "<test>",
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.balancer.close)
        [listening] = [child for child in service if child.name]
        ports = []
        listening._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        tunnel = _Tunnel()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port), tunnel
        )
        self.assertEqual((yield tunnel.echoed), b"ping")
        stopped = service.stopService()
        # The tunnel still carries bytes both ways.
        tunnel.transport.write(b"again")
        self.assertEqual((yield tunnel.echoed), b"again")
        self.assertNoResult(stopped)
        self.assertFalse(tunnel.lost.called)
        tunnel.transport.loseConnection()
        yield stopped
        self.assertEqual(service.balancer.streams["echo"].connections, 0)


class StopSignalTests(SynchronousTestCase):
    """
    L{manualb.tap.stopOnSignals}: the first SIGTERM or SIGINT stops
    gracefully, a second closes everything at once; the handlers only
    schedule the calls.
    """

    def test_firstStopsSecondHurries(self):
        class Signals:
            SIGTERM, SIGINT = 15, 2

            def __init__(self):
                self.handlers = {}

            def signal(self, number, handler):
                self.handlers[number] = handler

        scheduled = []

        class Reactor:
            def callFromThread(self, f, *args):
                scheduled.append(f)

        calls = []
        signals = Signals()
        stopOnSignals(
            Reactor(), lambda: calls.append("stop"), lambda: calls.append("hurry"), signals
        )
        self.assertEqual(sorted(signals.handlers), [2, 15])
        signals.handlers[15](15, None)
        self.assertEqual(calls, [])
        signals.handlers[2](2, None)
        for f in scheduled:
            f()
        self.assertEqual(calls, ["stop", "hurry"])
