"""
The buffered access log: C{access_log = PATH buffer=SIZE flush=TIME}, as
nginx's (L{manualb.accesslog.AccessLog} with a C{buffer}).
"""

from __future__ import annotations

import os
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent

from manualb.accesslog import AccessLog, parseAccessLog, standardOutput
from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.service import LoadBalancer, makeService
from manualb.testing import listenBackend, responseBody, serverAddress
from manualb.view import RequestView
from tests.test_logs import CONFIG as _CONFIG, Events

CONFIG = _CONFIG.format(main="")
from tests.test_shutdown import HeldBackend


def record(log: AccessLog, sent: int) -> None:
    """
    Log a request whose line is told apart by C{sent}.
    """
    log.record(RequestView("192.0.2.1", method=b"GET", target=b"/"), b"HTTP/1.1", 200, sent, [], [])


def lineOf(sent: int) -> bytes:
    """
    The line L{record} writes at time 0 for C{sent}.
    """
    output = BytesIO()
    record(AccessLog(output, clock=lambda: 0.0), sent)
    return output.getvalue()


class Writes:
    """
    An output that keeps each write apart.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.closed = True


class BufferTests(SynchronousTestCase):
    """
    Lines wait in the buffer until it would overflow, the flush time has
    passed, or the log is closed, reopened or changed.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.output = Writes()
        self.size = len(lineOf(1))

    def log(self, buffer: int, flush: float | None = None) -> AccessLog:
        return AccessLog(
            self.output, clock=lambda: 0.0, buffer=buffer, flush=flush, reactor=self.clock
        )

    def test_writtenWhenFull(self) -> None:
        """
        Lines are kept until the next would not fit; then those kept are
        written in one write, and the next is kept.
        """
        log = self.log(self.size * 3)
        for sent in (1, 2, 3):
            record(log, sent)
        self.assertEqual(self.output.writes, [])
        record(log, 4)
        self.assertEqual(self.output.writes, [lineOf(1) + lineOf(2) + lineOf(3)])
        log.close()
        self.assertEqual(self.output.writes[1:], [lineOf(4)])
        self.assertTrue(self.output.closed)

    def test_flushTime(self) -> None:
        """
        With C{flush}, lines are written once the oldest has waited that
        long, though the buffer has room; the next line starts the wait
        again.
        """
        log = self.log(64 * 1024, flush=1.0)
        record(log, 1)
        self.clock.advance(0.5)
        record(log, 2)
        self.clock.advance(0.4)
        self.assertEqual(self.output.writes, [])
        self.clock.advance(0.1)
        self.assertEqual(self.output.writes, [lineOf(1) + lineOf(2)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        record(log, 3)
        self.clock.advance(0.9)
        self.assertEqual(len(self.output.writes), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.output.writes[1:], [lineOf(3)])

    def test_noFlushTime(self) -> None:
        """
        Without C{flush}, as in nginx, lines wait in a buffer with room for
        as long as it takes; no timer runs.
        """
        log = self.log(64 * 1024)
        record(log, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(self.output.writes, [])
        log.close()
        self.assertEqual(self.output.writes, [lineOf(1)])

    def test_closeCancelsTimer(self) -> None:
        """
        Closing writes the buffer and stops the flush timer.
        """
        log = self.log(64 * 1024, flush=1.0)
        record(log, 1)
        log.close()
        self.assertEqual(self.output.writes, [lineOf(1)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lineLargerThanBuffer(self) -> None:
        """
        A line larger than the buffer is written alone, after the lines
        kept before it.
        """
        log = self.log(self.size + 10)
        record(log, 1)
        big = RequestView("192.0.2.1", method=b"GET", target=b"/" + b"x" * 200)
        log.record(big, b"HTTP/1.1", 200, 2, [], [])
        record(log, 3)
        self.assertEqual(len(self.output.writes), 2)
        self.assertEqual(self.output.writes[0], lineOf(1))
        self.assertIn(b"/" + b"x" * 200, self.output.writes[1])
        log.close()
        self.assertEqual(self.output.writes[2:], [lineOf(3)])

    def test_unbuffered(self) -> None:
        """
        Without a buffer, each line is one write as it comes.
        """
        log = self.log(0)
        record(log, 1)
        record(log, 2)
        self.assertEqual(self.output.writes, [lineOf(1), lineOf(2)])

    def test_partialWrites(self) -> None:
        """
        An output that takes part of a write gets the rest after it.
        """

        class Halves(Writes):
            def write(self, data) -> int:
                taken = max(1, len(data) // 2)
                self.writes.append(bytes(data[:taken]))
                return taken

        self.output = Halves()
        log = self.log(64 * 1024)
        record(log, 1)
        record(log, 2)
        log.writePending()
        self.assertEqual(b"".join(self.output.writes), lineOf(1) + lineOf(2))

    def test_writeErrorOnce(self) -> None:
        """
        An output that fails when the buffer is written is said once; the
        lines after it are dropped, without a write or a timer, until the
        log is reopened.
        """

        class Broken(Writes):
            def write(self, data) -> int:
                self.writes.append(bytes(data))
                raise OSError(28, "No space left on device")

        self.output = Broken()
        events = Events(self)
        log = self.log(self.size * 2, flush=1.0)
        for sent in range(10):
            record(log, sent)
        self.clock.advance(10)
        log.close()
        self.assertEqual(len(self.output.writes), 1)
        [text] = events.texts()
        self.assertIn("No space left on device", text)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reopen(self) -> None:
        """
        A reopen (after the file was renamed) writes the buffer to the
        renamed file first; the lines after it go to the new file.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "access.log")
        log = AccessLog(
            target=path, clock=lambda: 0.0, buffer=64 * 1024, flush=60.0, reactor=self.clock
        )
        log.start()
        self.addCleanup(log.close)
        record(log, 1)
        os.rename(path, path + ".1")
        record(log, 2)
        log.reopen()
        record(log, 3)
        log.close()
        with open(path + ".1", "rb") as old, open(path, "rb") as new:
            self.assertEqual(old.read(), lineOf(1) + lineOf(2))
            self.assertEqual(new.read(), lineOf(3))

    def test_change(self) -> None:
        """
        A change of target (a reload) writes the buffer to the old one
        first; the new settings apply from then on.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        first, second = (os.path.join(directory, name) for name in ("a.log", "b.log"))
        log = AccessLog(target=first, clock=lambda: 0.0, buffer=64 * 1024, reactor=self.clock)
        log.start()
        self.addCleanup(log.close)
        record(log, 1)
        log.change(second, "combined")
        with open(first, "rb") as f:
            self.assertEqual(f.read(), lineOf(1))
        record(log, 2)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), lineOf(2))
        log.change(second, "combined", buffer=64 * 1024, flush=1.0)
        record(log, 3)
        self.clock.advance(1)
        with open(second, "rb") as f:
            self.assertEqual(f.read(), lineOf(2) + lineOf(3))

    def test_notStarted(self) -> None:
        """
        Lines logged before the log is started are dropped, not kept.
        """
        path = self.mktemp()
        log = AccessLog(target=path, clock=lambda: 0.0, buffer=64 * 1024, reactor=self.clock)
        record(log, 1)
        log.start()
        log.close()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"")

    def test_flushNeedsReactor(self) -> None:
        """
        A flush time with no reactor to time it is a mistake of the caller.
        """
        self.assertRaises(ValueError, AccessLog, BytesIO(), buffer=1024, flush=1.0)

    def test_daemonStandardOutput(self) -> None:
        """
        A daemon's standard output (Twisted's log) gets one event a line,
        from a buffer of several.
        """
        events = Events(self)
        log = AccessLog(standardOutput(daemon=True), clock=lambda: 0.0, buffer=64 * 1024)
        record(log, 1)
        record(log, 2)
        self.assertEqual(events.events, [])
        log.close()
        self.assertEqual(
            events.texts(), [lineOf(1).decode().rstrip("\n"), lineOf(2).decode().rstrip("\n")]
        )


class ParseTests(SynchronousTestCase):
    """
    C{access_log}'s value: the target, then C{buffer=} and C{flush=}.
    """

    def test_values(self) -> None:
        self.assertEqual(parseAccessLog("off"), (None, 0, None))
        self.assertEqual(parseAccessLog("-"), ("-", 0, None))
        self.assertEqual(parseAccessLog("/var/log/a.log"), ("/var/log/a.log", 0, None))
        self.assertEqual(parseAccessLog("/var/log/a.log buffer=64k"), ("/var/log/a.log", 65536, None))
        self.assertEqual(
            parseAccessLog("/var/log/a.log buffer=32k flush=5s"), ("/var/log/a.log", 32768, 5.0)
        )
        self.assertEqual(parseAccessLog("- flush=1m buffer=1m"), ("-", 1024 * 1024, 60.0))
        self.assertEqual(parseAccessLog("/logs/my access.log"), ("/logs/my access.log", 0, None))

    def test_errors(self) -> None:
        for text, expected in [
            ("/a.log flush=1s", "flush= needs a buffer="),
            ("/a.log bufer=64k", "unknown option 'bufer'"),
            ("/a.log buffer=0", "bad buffer"),
            ("/a.log buffer=64q", "bad buffer"),
            ("/a.log buffer=64k flush=soon", "bad flush"),
            ("/a.log buffer=64k buffer=1m", "given twice"),
            ("off buffer=64k", "off takes no options"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parseAccessLog(text)
            self.assertIn(expected, str(raised.exception), text)

    def test_config(self) -> None:
        config = parseConfig(
            CONFIG.replace("access_log = off", "access_log = /tmp/a.log buffer=64k flush=1s")
        )
        self.assertEqual(
            (config.access_log, config.access_log_buffer, config.access_log_flush),
            ("/tmp/a.log", 65536, 1.0),
        )
        config = parseConfig(CONFIG.replace("access_log = off", "access_log = /tmp/a.log"))
        self.assertEqual((config.access_log_buffer, config.access_log_flush), (0, None))

    def test_configError(self) -> None:
        """
        A bad option is the error of the key, with its file and line.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(CONFIG.replace("access_log = off", "access_log = /tmp/a.log flush=1s"))
        with self.assertRaises(ConfigError) as raised:
            loadConfig(path)
        message = str(raised.exception)
        self.assertIn(path, message)
        self.assertIn("[manualb] access_log: flush= needs a buffer=", message)
        self.assertEqual(raised.exception.line, 3)

    def test_service(self) -> None:
        """
        The balancer's log buffers as configured, on the balancer's reactor.
        """
        path = self.mktemp()
        clock = MemoryReactorClock()
        config = parseConfig(
            CONFIG.replace("access_log = off", f"access_log = {path} buffer=4k flush=2s")
        )
        balancer = LoadBalancer(config, clock)
        balancer.load()
        self.addCleanup(balancer.accessLog.close)
        record(balancer.accessLog, 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"")
        clock.advance(2)
        with open(path, "rb") as f:
            self.assertIn(b" 200 1 ", f.read())


class EndToEndTests(TestCase):
    """
    A buffered log over real sockets on 127.0.0.1.
    """

    @inlineCallbacks
    def serve(self, accessLog: str):
        self.backend = HeldBackend()
        backendPort = yield listenBackend(reactor, self.backend)
        self.addCleanup(backendPort.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "lb.ini")
        self.logPath = os.path.join(directory, "access.log")
        self.text = (
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"access_log = {accessLog.format(log=self.logPath)}\n"
            f"[upstream web]\nservers = {serverAddress(backendPort)}\n"
            "[route r]\npath = /\nupstream = web\n"
        )
        with open(self.path, "w") as f:
            f.write(self.text)
        service = self.service = makeService(loadConfig(self.path), reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.addCleanup(service.balancer.close)
        [listening] = [child for child in service if child.name]
        ports = []
        listening._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        self.url = b"http://127.0.0.1:%d/" % (ports[0].getHost().port,)

    def logText(self, path=None) -> bytes:
        with open(path or self.logPath, "rb") as f:
            return f.read()

    @inlineCallbacks
    def requests(self, count: int) -> list:
        agent = Agent(reactor)
        responses = [agent.request(b"GET", self.url) for _ in range(count)]
        yield self.backend.arrived(count)
        return responses

    @inlineCallbacks
    def answered(self, responses):
        results = yield gatherResults(responses)
        bodies = yield gatherResults([responseBody(response) for response in results])
        self.assertEqual([response.code for response in results], [200] * len(results))
        self.assertEqual(bodies, [b"ok"] * len(results))

    @inlineCallbacks
    def test_gracefulStopWritesAll(self):
        """
        Lines kept in the buffer are written by a graceful stop, those of
        the requests in flight when it began too: none is lost.
        """
        yield self.serve("{log} buffer=64k flush=1h")
        done = yield self.requests(10)
        self.backend.release()
        yield self.answered(done)
        self.assertEqual(self.logText(), b"")
        inFlight = yield self.requests(20)
        stopped = self.service.stopService()
        self.backend.release()
        yield self.answered(inFlight)
        yield stopped
        lines = self.logText().splitlines()
        self.assertEqual(len(lines), 30)
        self.assertTrue(all(b'"GET / HTTP/1.1" 200 2' in line for line in lines), lines)

    @inlineCallbacks
    def test_reloadToAnotherFile(self):
        """
        A reload to another file writes the buffer to the first one; the
        next lines go to the new one.
        """
        yield self.serve("{log} buffer=64k")
        done = yield self.requests(3)
        self.backend.release()
        yield self.answered(done)
        second = self.logPath + ".2"
        with open(self.path, "w") as f:
            f.write(self.text.replace(self.logPath + " buffer=64k", second))
        applied, message = self.service.balancer.reloadFile()
        self.assertTrue(applied, message)
        self.assertEqual(len(self.logText().splitlines()), 3)
        done = yield self.requests(1)
        self.backend.release()
        yield self.answered(done)
        self.assertEqual(len(self.logText(second).splitlines()), 1)


class CombinedLineTests(SynchronousTestCase):
    """
    The combined line, made in one pass over the headers.
    """

    def line(self, headers, upstreams=(), times=()) -> bytes:
        output = BytesIO()
        log = AccessLog(output, clock=lambda: 0.0)
        view = RequestView("192.0.2.1", method=b"GET", target=b"/a", headers=headers)
        log.record(view, b"HTTP/1.1", 200, 5, list(upstreams), list(times))
        return output.getvalue()

    def test_firstOfEach(self) -> None:
        """
        The first C{Referer} and the first C{User-Agent}, in any case, are
        written; others are not.
        """
        line = self.line(
            [
                (b"X-Referer", b"no"),
                (b"user-AGENT", b"ua1"),
                (b"REFERER", b"http://r/"),
                (b"User-Agent", b"ua2"),
                (b"Referer", b"http://s/"),
            ]
        )
        self.assertTrue(line.endswith(b'"GET /a HTTP/1.1" 200 5 "http://r/" "ua1" - -\n'), line)

    def test_escapedAlone(self) -> None:
        """
        An unsafe byte in one value escapes that one; the others stay as
        they are.
        """
        line = self.line([(b"Referer", b'a"b'), (b"User-Agent", b"c\\d")])
        self.assertTrue(line.endswith(b'"GET /a HTTP/1.1" 200 5 "a\\x22b" "c\\x5Cd" - -\n'), line)

    def test_everyByteEscaped(self) -> None:
        """
        Each byte outside printable ASCII, a quote or a backslash, in the
        user agent, is written escaped; every other byte as it is.
        """
        for byte in range(256):
            value = bytes([byte])
            unsafe = byte < 0x20 or byte >= 0x7F or value in (b'"', b"\\")
            written = b"\\x%02X" % (byte,) if unsafe else value
            self.assertTrue(
                self.line([(b"User-Agent", b"a" + value)]).endswith(
                    b'"-" "a' + written + b'" - -\n'
                ),
                byte,
            )

    def test_upstreams(self) -> None:
        """
        Each server tried and its time, in order.
        """
        self.assertTrue(
            self.line([], ["10.0.0.1:80"], [0.0015]).endswith(b'"-" "-" 10.0.0.1:80 0.002\n')
        )
        self.assertTrue(
            self.line([], ["10.0.0.1:80", "10.0.0.2:80"], [0.001, 0.25]).endswith(
                b'"-" "-" 10.0.0.1:80, 10.0.0.2:80 0.001, 0.250\n'
            )
        )
