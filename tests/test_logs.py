"""
Logs an operator can live with: the access log reopened on SIGUSR1,
C{access_log = -} of a daemon, an output that breaks, C{log_format}, and
request ids.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
from io import BytesIO

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from manualb.accesslog import VARIABLES, AccessLog, compileFormat, standardOutput
from manualb.config import ConfigError
from manualb.configfile import parseConfig
from manualb.forwarding import requestHead
from manualb.stages import RequestId, newRequestId
from manualb.tap import isDaemon, reopenOnSignal
from manualb.testing import MemoryBalancer
from manualb.view import Passage, RequestView

GET = b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

CONFIG = """\
[manualb]
listen = tcp:0
access_log = off
{main}
[gatekeeper]
trusted_proxies = 192.0.2.0/24

[upstream u]
servers = 10.0.0.1:8001

[route r]
path = /
upstream = u
"""


def headOf(response: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in head[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return head[0], headers


def balancer(format: str = "combined") -> MemoryBalancer:
    lb = MemoryBalancer(parseConfig(CONFIG.format(main="")))
    lb.balancer.resource.accessLog = AccessLog(
        lb.accessLog, clock=lb.reactor.seconds, format=format
    )
    return lb


class Events:
    """
    Catches the events of Twisted's global log while a test runs.
    """

    def __init__(self, case: SynchronousTestCase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]


class ReopenTests(SynchronousTestCase):
    """
    The access log is reopened by name, after a rename.
    """

    def test_reopenAfterRename(self):
        """
        After the file is renamed, lines go to the renamed file until the
        log is reopened, then to a new file of the old name.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "access.log")
        log = AccessLog(target=path, clock=lambda: 0.0)
        log.start()
        self.addCleanup(log.close)
        view = RequestView("192.0.2.1", method=b"GET", target=b"/a")
        log.record(view, b"HTTP/1.1", 200, 1, [], [])
        os.rename(path, path + ".1")
        log.record(view, b"HTTP/1.1", 200, 2, [], [])
        log.reopen()
        log.record(view, b"HTTP/1.1", 200, 3, [], [])
        with open(path + ".1", "rb") as old, open(path, "rb") as new:
            self.assertEqual([line.split(b" ")[-5] for line in old], [b"1", b"2"])
            self.assertEqual([line.split(b" ")[-5] for line in new], [b"3"])

    def test_reopenClosedLog(self):
        """
        A log that is closed (or never started) is not opened by a reopen.
        """
        path = self.mktemp()
        log = AccessLog(target=path)
        log.reopen()
        self.assertFalse(os.path.exists(path))

    def test_reopenFails(self):
        """
        When the file cannot be opened again, the log says so once and goes
        on writing to the old one.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "access.log")
        log = AccessLog(target=path, clock=lambda: 0.0)
        log.start()
        self.addCleanup(log.close)
        os.rename(path, path + ".1")
        os.rename(directory, directory + ".gone")
        events = Events(self)
        log.reopen()
        log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 7, [], [])
        self.assertEqual(len(events.events), 1)
        self.assertIn("cannot reopen", events.texts()[0])
        with open(os.path.join(directory + ".gone", "access.log.1"), "rb") as old:
            self.assertIn(b" 200 7 ", old.read())


class FakeSignals:
    """
    The L{signal} module's handler table, without the process.
    """

    SIGUSR1 = signal.SIGUSR1 if hasattr(signal, "SIGUSR1") else 10

    def __init__(self, handler=signal.SIG_DFL):
        self.handlers = {self.SIGUSR1: handler}

    def getsignal(self, number):
        return self.handlers[number]

    def signal(self, number, handler):
        self.handlers[number] = handler


class SignalTests(SynchronousTestCase):
    """
    SIGUSR1 schedules the reopen in the reactor, after twistd's handler.
    """

    def test_scheduledInReactor(self):
        """
        The handler only schedules the reopen (C{callFromThread}); it runs
        when the reactor runs it.
        """
        scheduled = []

        class Reactor:
            def callFromThread(self, f, *args):
                scheduled.append((f, args))

        reopened = []
        signals = FakeSignals()
        reopenOnSignal(Reactor(), lambda: reopened.append(True), signals)
        signals.handlers[signals.SIGUSR1](signals.SIGUSR1, None)
        self.assertEqual(reopened, [])
        [(f, args)] = scheduled
        f(*args)
        self.assertEqual(reopened, [True])

    def test_chainsTwistd(self):
        """
        twistd's own handler (rotating its log file) still runs, and is put
        back when the service stops.
        """
        rotated = []

        def twistd(number, frame):
            rotated.append(number)

        class Reactor:
            def callFromThread(self, f, *args):
                f(*args)

        reopened = []
        signals = FakeSignals(twistd)
        restore = reopenOnSignal(Reactor(), lambda: reopened.append(True), signals)
        signals.handlers[signals.SIGUSR1](signals.SIGUSR1, None)
        self.assertEqual((rotated, reopened), ([signals.SIGUSR1], [True]))
        restore()
        self.assertIs(signals.handlers[signals.SIGUSR1], twistd)

    def test_realFileBySignal(self):
        """
        The plugin's service installs the handler when it starts: a real
        SIGUSR1 after a rename makes the next lines go to a new file.
        """
        if not hasattr(signal, "SIGUSR1"):
            raise self.skipTest("no SIGUSR1 here")
        from manualb.service import makeService
        from manualb.tap import _ExitIfCannotListen

        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "access.log")
        config = parseConfig(
            CONFIG.format(main="").replace("access_log = off", "access_log = " + path)
        )
        reactor = MemoryReactorClock()
        reactor.callFromThread = lambda f, *args: reactor.callLater(0, f, *args)
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        self.addCleanup(gc.unfreeze)
        service = _ExitIfCannotListen(makeService(config, reactor), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        os.rename(path, path + ".1")
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertFalse(os.path.exists(path))
        reactor.advance(0)
        self.assertTrue(os.path.exists(path))
        service.balancer.accessLog.record(RequestView("192.0.2.9"), b"HTTP/1.1", 204, 0, [], [])
        with open(path, "rb") as new:
            self.assertIn(b"192.0.2.9 - - ", new.read())


class StandardOutputTests(SynchronousTestCase):
    """
    C{access_log = -}: standard output in the foreground, Twisted's log
    when daemonised; a broken output is said once, not per request.
    """

    def test_daemonGoesToTwistedLog(self):
        """
        A daemon's C{-} writes its lines as events of Twisted's log.
        """
        events = Events(self)
        output = standardOutput(daemon=True)
        output.write(b'192.0.2.1 - - "GET / HTTP/1.1" 200 0\n')
        self.assertEqual(events.texts(), ['192.0.2.1 - - "GET / HTTP/1.1" 200 0'])

    def test_foregroundGoesToStdout(self):
        """
        In the foreground, C{-} is a copy of the process's standard output.
        """
        output = standardOutput(daemon=False)
        self.addCleanup(output.close)
        self.assertEqual(
            os.fstat(output.fileno()).st_ino, os.fstat(1).st_ino
        )

    def test_logDaemon(self):
        """
        A log with C{daemon} set opens C{-} as Twisted's log.
        """
        events = Events(self)
        log = AccessLog(target="-", clock=lambda: 0.0)
        log.daemon = True
        log.start()
        log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        [text] = events.texts()
        self.assertTrue(text.startswith("192.0.2.1 - - "))

    def test_isDaemon(self):
        """
        twistd's C{-n} (nodaemon) is read from the parent options; plugin
        options of their own are in the foreground.
        """
        from manualb.tap import Options

        options = Options()
        self.assertFalse(isDaemon(options))

        class Parent(usage.Options):
            optFlags = [["nodaemon", "n", ""]]

        for argv, daemon in (([], True), (["-n"], False)):
            parent = Parent()
            parent.parseOptions(argv)
            options.parent = parent
            self.assertEqual(isDaemon(options), daemon)

    def test_brokenOutput(self):
        """
        An output that fails is said once in Twisted's log, and further
        lines are dropped, without an exception.
        """

        class Broken:
            writes = 0

            def write(self, data):
                Broken.writes += 1
                raise BrokenPipeError(32, "Broken pipe")

            def close(self):
                pass

        events = Events(self)
        log = AccessLog(Broken(), clock=lambda: 0.0)
        for i in range(3):
            log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        self.assertEqual(Broken.writes, 1)
        [text] = events.texts()
        self.assertIn("Broken pipe", text)

    def test_closedStdout(self):
        """
        A standard output closed under the log (ValueError of a closed file,
        EBADF) gives one log line, then nothing.
        """
        events = Events(self)
        read, write = os.pipe()
        os.close(read)
        output = os.fdopen(write, "wb", buffering=0)
        log = AccessLog(output, clock=lambda: 0.0)
        for i in range(3):
            log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        self.assertEqual(len(events.events), 1)
        closed = BytesIO()
        closed.close()
        log = AccessLog(closed, clock=lambda: 0.0, format="json")
        log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        log.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        self.assertEqual(len(events.events), 2)


class FormatTests(SynchronousTestCase):
    """
    C{log_format}: combined, json, or nginx variables.
    """

    def request(self, lb: MemoryBalancer, extra: bytes = b"", host="192.0.2.77") -> bytes:
        client = lb.client(host=host)
        client.send(
            b"GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\nReferer: http://r/\r\n"
            b"User-Agent: t\"x\r\n" + extra + b"\r\n"
        )
        backend = lb.acceptConnection()
        backend.send(OK)
        return client.received()

    def test_combinedUnchanged(self):
        """
        The default line is the combined line of before, byte for byte.
        """
        lb = balancer()
        lb.reactor.advance(1e9)
        self.request(lb)
        stamp = AccessLog(BytesIO(), clock=lambda: 1e9)._timestamp()
        self.assertEqual(
            lb.accessLog.getvalue(),
            b'192.0.2.77 - - ' + stamp + b' "GET /x?y=1 HTTP/1.1" 200 5 "http://r/" '
            b'"t\\x22x" 10.0.0.1:8001 0.000\n',
        )

    def test_json(self):
        """
        C{json} writes one JSON object a line, with a field for each
        variable.
        """
        lb = balancer("json")
        response = self.request(lb)
        [line] = lb.accessLog.getvalue().splitlines()
        entry = json.loads(line)
        self.assertEqual(set(entry), set(VARIABLES) | {"http_referer", "http_user_agent"})
        self.assertEqual(entry["status"], 200)
        self.assertEqual(entry["body_bytes_sent"], 5)
        self.assertEqual(entry["request"], "GET /x?y=1 HTTP/1.1")
        self.assertEqual(entry["upstream_addr"], "10.0.0.1:8001")
        self.assertEqual(entry["upstream_status"], "200")
        self.assertEqual(entry["http_user_agent"], "t\\x22x")
        self.assertEqual(
            entry["request_id"].encode("ascii"), headOf(response)[1][b"x-request-id"][0]
        )

    def test_everyVariable(self):
        """
        A format string with every variable gives each its value.
        """
        lb = balancer(
            " ".join("%s=$%s" % (name, name) for name in VARIABLES) + " ua=${http_user_agent}"
        )
        lb.reactor.advance(1e9)
        response = self.request(lb)
        requestId = headOf(response)[1][b"x-request-id"][0].decode("ascii")
        line = lb.accessLog.getvalue().decode("ascii")
        self.assertTrue(line.endswith("\n"))
        values = dict(re.findall(r"(\w+)=(\S+(?: \S+ HTTP/1\.1)?)", line))
        stamp = AccessLog(BytesIO(), clock=lambda: 1e9)._timestamp().decode("ascii")
        self.assertEqual(
            values,
            {
                "remote_addr": "192.0.2.77",
                "time_local": stamp[1:-1].split(" ")[0],
                "time_iso8601": values["time_iso8601"],
                "request": "GET /x?y=1 HTTP/1.1",
                "request_method": "GET",
                "request_uri": "/x?y=1",
                "host": "example.com",
                "status": "200",
                "body_bytes_sent": "5",
                "request_time": "0.000",
                "upstream_addr": "10.0.0.1:8001",
                "upstream_status": "200",
                "upstream_response_time": "0.000",
                "request_id": requestId,
                "scheme": "http",
                "server_protocol": "HTTP/1.1",
                "ua": "t\\x22x",
            },
        )
        self.assertRegex(values["time_iso8601"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")

    def test_hostileValuesEscaped(self):
        """
        No value of a format string can forge a line: controls, quotes and
        bytes outside ASCII are escaped, in headers and in JSON.
        """
        for format in ('"$http_x_evil" "$request_uri"', "json"):
            log = BytesIO()
            access = AccessLog(log, clock=lambda: 0.0, format=format)
            view = RequestView(
                "192.0.2.1",
                method=b"GET",
                target=b"/\xff\"",
                headers=[(b"X-Evil", b"a\nb\"c\\\x00\xe9")],
            )
            access.record(view, b"HTTP/1.1", 200, 0, [], [])
            line = log.getvalue()
            self.assertEqual(line.count(b"\n"), 1, line)
            self.assertTrue(line.isascii())
            if format != "json":
                self.assertEqual(line, b'"a\\x0Ab\\x22c\\x5C\\x00\\xE9" "/\\xFF\\x22"\n')
            else:
                self.assertEqual(json.loads(line)["request_uri"], "/\\xFF\\x22")

    def test_upstreamStatusOfRetries(self):
        """
        C{$upstream_status} has one status for each server tried: 502 for
        one refused.
        """
        config = parseConfig(
            CONFIG.format(main="").replace("10.0.0.1:8001", "10.0.0.1:8001\n    10.0.0.2:8002")
        )
        lb = MemoryBalancer(config)
        lb.balancer.resource.accessLog = AccessLog(
            lb.accessLog, clock=lb.reactor.seconds, format="$upstream_addr|$upstream_status"
        )
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        lb.acceptConnection().send(OK)
        self.assertEqual(
            lb.accessLog.getvalue(), b"10.0.0.1:8001, 10.0.0.2:8002|502, 200\n"
        )

    def test_unreadRequest(self):
        """
        A request refused before it was read whole gets a line too.
        """
        log = BytesIO()
        access = AccessLog(log, clock=lambda: 0.0, format="$remote_addr $request $status $request_id")
        from twisted.internet.address import IPv4Address

        access.recordUnread(IPv4Address("TCP", "192.0.2.3", 1), b"GET /\x01 HTTP/1.1", 400, 0)
        access.recordUnread(IPv4Address("TCP", "192.0.2.3", 1), None, 408, 0)
        self.assertEqual(
            log.getvalue(), b"192.0.2.3 GET /\\x01 HTTP/1.1 400 -\n192.0.2.3 - 408 -\n"
        )

    def test_compileErrors(self):
        """
        An unknown variable, a bare C{$} or text that is not ASCII is an
        error; C{combined} compiles to the built-in line.
        """
        self.assertIsNone(compileFormat("combined"))
        for text, words in (
            ("$status $nosuch", "unknown variable $nosuch"),
            ("100$", "must start a variable"),
            ("$status \u00e9", "ASCII"),
        ):
            with self.assertRaises(ValueError) as raised:
                compileFormat(text)
            self.assertIn(words, str(raised.exception))


class ConfigTests(SynchronousTestCase):
    """
    C{log_format} in C{[manualb]}.
    """

    def test_default(self):
        self.assertEqual(parseConfig(CONFIG.format(main="")).log_format, "combined")

    def test_given(self):
        config = parseConfig(CONFIG.format(main="log_format = $status $request_id"))
        self.assertEqual(config.log_format, "$status $request_id")

    def test_unknownVariable(self):
        """
        An unknown variable is an error naming file, section and key.
        """
        with self.assertRaises(ConfigError) as raised:
            parseConfig(CONFIG.format(main="log_format = $status $stauts"), "lb.ini")
        message = str(raised.exception)
        self.assertTrue(
            message.startswith("lb.ini: [manualb] log_format: unknown variable $stauts"),
            message,
        )

    def test_service(self):
        """
        The balancer's log writes in the configured format.
        """
        from manualb.service import LoadBalancer

        path = self.mktemp()
        config = parseConfig(
            CONFIG.format(main="log_format = json").replace(
                "access_log = off", "access_log = " + path
            )
        )
        balancer = LoadBalancer(config, MemoryReactorClock())
        balancer.load()
        balancer.accessLog.record(RequestView("192.0.2.1"), b"HTTP/1.1", 200, 0, [], [])
        balancer.accessLog.close()
        with open(path, "rb") as f:
            self.assertEqual(json.loads(f.read())["remote_addr"], "192.0.2.1")


class RequestIdTests(SynchronousTestCase):
    """
    Every request has an id: on its response, to its backend, in the log.
    """

    def test_proxied(self):
        """
        A proxied response carries the id the backend got, in place of the
        backend's own.
        """
        lb = balancer("$request_id")
        client = lb.client(host="198.51.100.1")
        client.send(GET.replace(b"\r\n\r\n", b"\r\nX-Request-Id: forged\r\n\r\n"))
        backend = lb.acceptConnection()
        sent = backend.received()
        backend.send(OK.replace(b"\r\n\r\n", b"\r\nX-Request-Id: backend\r\n\r\n"))
        [requestId] = headOf(client.received())[1][b"x-request-id"]
        self.assertRegex(requestId, rb"^[0-9a-f]{16}$")
        self.assertEqual(headOf(sent)[1][b"x-request-id"], [requestId])
        self.assertEqual(lb.accessLog.getvalue(), requestId + b"\n")

    def test_answeredLocally(self):
        """
        A response of the proxy's own (404, 405, the gatekeeper's 403)
        carries an id too, one only.
        """
        lb = balancer("$request_id $status")
        client = lb.client()
        client.send(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 405 Method Not Allowed")
        [requestId] = headers[b"x-request-id"]
        self.assertEqual(lb.accessLog.getvalue(), requestId + b" 405\n")

    def test_gatekeeperRefusal(self):
        """
        The gatekeeper's refusal shows the request's id, the one in the
        header and the log.
        """
        config = parseConfig(
            CONFIG.format(main="").replace(
                "trusted_proxies = 192.0.2.0/24", "deny = 198.51.100.0/24"
            )
        )
        lb = MemoryBalancer(config)
        lb.balancer.resource.accessLog = AccessLog(
            lb.accessLog, clock=lb.reactor.seconds, format="$request_id"
        )
        client = lb.client(host="198.51.100.1")
        client.send(GET)
        response = client.received()
        line, headers = headOf(response)
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden")
        [requestId] = headers[b"x-request-id"]
        self.assertIn(b"Request id: " + requestId, response)
        self.assertEqual(lb.accessLog.getvalue(), requestId + b"\n")

    def test_fromTrustedProxy(self):
        """
        A trusted proxy's id is kept; an untrusted client's is not, nor a
        trusted one that is not a sane token.
        """
        for host, given, kept in (
            ("192.0.2.10", b"abc-123.x:y", True),
            ("198.51.100.1", b"abc-123.x:y", False),
            ("192.0.2.10", b"a b", False),
            ("192.0.2.10", b"x" * 129, False),
            ("192.0.2.10", b"a\"b", False),
        ):
            lb = balancer()
            client = lb.client(host=host)
            client.send(GET.replace(b"\r\n\r\n", b"\r\nX-Request-Id: " + given + b"\r\n\r\n"))
            backend = lb.acceptConnection()
            [toBackend] = headOf(backend.received())[1][b"x-request-id"]
            backend.send(OK)
            [toClient] = headOf(client.received())[1][b"x-request-id"]
            self.assertEqual(toBackend, toClient)
            self.assertEqual(toClient == given, kept, (host, given))
            if not kept:
                self.assertRegex(toClient, rb"^[0-9a-f]{16}$")

    def test_stage(self):
        """
        The stage takes the first C{X-Request-Id} of a trusted peer only.
        """
        ids = iter([b"new1", b"new2"])
        stage = RequestId(lambda: next(ids))
        for trusted, expected in ((True, b"given"), (False, b"new1")):
            passage = Passage(
                RequestView(
                    "192.0.2.1",
                    headers=[(b"x-request-id", b"given"), (b"X-Request-Id", b"second")],
                    trustedPeer=trusted,
                )
            )
            self.assertIsNone(stage.handle(passage))
            self.assertEqual(passage.requestId, expected)
            self.assertEqual(passage.headers, [(b"X-Request-Id", expected)])

    def test_hostileId(self):
        """
        A trusted peer's id that holds CR, LF, NUL or a header of its own
        (as a front end other than twisted.web might pass on) is replaced,
        and the head sent to the backend has no line but its own.
        """
        for given in (b"ok\r\nX-Admin: 1", b"ok\nX", b"ok\x00", b"ok\r", b"ok "):
            stage = RequestId(lambda: b"fresh")
            passage = Passage(
                RequestView("192.0.2.1", headers=[(b"X-Request-Id", given)], trustedPeer=True)
            )
            self.assertIsNone(stage.handle(passage))
            self.assertEqual(passage.requestId, b"fresh")
            head = requestHead(
                b"GET", b"/", [(b"Host", b"a")], b"192.0.2.1", b"HTTP/1.1", False, 0, b"a",
                requestId=passage.requestId,
            )
            lines = head.split(b"\r\n")
            self.assertNotIn(b"\x00", head)
            self.assertNotIn(b"X-Admin", head)
            self.assertEqual([line for line in lines if b"\n" in line or b"\r" in line], [])

    def test_newIds(self):
        """
        New ids are 16 hex digits, different each time, across batches.
        """
        ids = [newRequestId() for i in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        for requestId in ids:
            self.assertRegex(requestId, rb"^[0-9a-f]{16}$")

    def test_backendHead(self):
        """
        The backend gets the request's id in place of any the client sent,
        also one spelt with underscores.
        """
        head = requestHead(
            b"GET", b"/", [(b"Host", b"a"), (b"X-Request-Id", b"c"), (b"X_Request_Id", b"d")],
            b"192.0.2.1", b"HTTP/1.1", False, 0, b"a", requestId=b"0123",
        )
        self.assertIn(b"\r\nX-Request-Id: 0123\r\n", head)
        self.assertNotIn(b": c\r\n", head)
        self.assertNotIn(b": d\r\n", head)
