"""
The harness of the fuzz tests (L{tests.test_fuzz}): a deterministic
hypothesis profile, a backend that checks every byte the balancer sends it
with an independent HTTP/1.1 parser (h11), a strict reader of the responses
a client gets, and an in-memory balancer driven until nothing moves.

The budget is fixed and the examples derandomised, so that every run
(CI's included) tries the same inputs: C{MANUALB_FUZZ_SCALE=10} multiplies
the number of examples for a deeper run by hand.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterable

import attrs
import h11
from hypothesis import HealthCheck, settings

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from manualb.config import Config
from manualb.configfile import parseConfig
from manualb.testing import MemoryBalancer, MemoryPeer

settings.register_profile(
    "manualb-fuzz",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)

_SCALE = max(1, int(os.environ.get("MANUALB_FUZZ_SCALE", "1") or "1"))


def fuzzSettings(examples: int) -> settings:
    """
    The settings of one fuzz test: the deterministic profile with
    C{examples} examples (times C{MANUALB_FUZZ_SCALE}).
    """
    return settings(settings.get_profile("manualb-fuzz"), max_examples=examples * _SCALE)


TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_FIELD_VALUE = re.compile(rb"[^\x00\r\n]*\Z")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ORIGIN_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\x00\r\n]*)?\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]+\Z")

log = Logger()

#: How a backend's answer names the request it answers.
SEEN = b"x-seen"


def routesConfig(*routes: str, **gatekeeper: str) -> Config:
    """
    A configuration of one upstream, C{backends} (one server, 10.0.0.1:8001,
    reached in memory), behind C{routes}: each the body of a C{[route]}
    section, C{upstream = backends} added.

    @param gatekeeper: Keys of a C{[gatekeeper]} section.
    """
    lines = [
        "[manualb]",
        "listen = tcp:0:interface=127.0.0.1",
        "access_log = off",
        "",
        "[upstream backends]",
        "servers = 10.0.0.1:8001",
        "keepalive_timeout = 30s",
        "",
    ]
    if gatekeeper:
        lines.append("[gatekeeper]")
        lines += ["%s = %s" % item for item in gatekeeper.items()]
        lines.append("")
    for number, route in enumerate(routes or ("path = /",)):
        lines += ["[route r%d]" % (number,), route, "upstream = backends", ""]
    return parseConfig("\n".join(lines), "<fuzz>")


class ValidatingBackend:
    """
    A backend connection that reads what the balancer sends with h11, as a
    strict server would, answers each whole request with C{200} naming it
    (C{X-Seen: N}), and notes anything that is not well-framed HTTP/1.1.

    @ivar violations: What was wrong with the bytes the backend got.
    @ivar requests: The C{(number, method, target, headers)} of every
        request head it read.
    @ivar answered: The numbers of the requests it read whole and answered.
    """

    def __init__(self, peer: MemoryPeer, counter: list[int]):
        self.peer = peer
        self._counter = counter
        self.connection = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.violations: list[str] = []
        self.requests: list[tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]] = []
        self.answered: list[int] = []
        self.raw = b""
        self._current: int | None = None
        self._method = b""
        self._broken = False

    @property
    def open(self) -> bool:
        return self.peer.connected

    def pump(self) -> bool:
        """
        Read and answer what arrived; whether anything did.
        """
        data = self.peer.received()
        if not data:
            return False
        self.raw += data
        if self._broken:
            return True
        self.connection.receive_data(data)
        while not self._broken:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as e:
                self._violation("h11 refused the request: %s" % (e,))
                return True
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                self._request(event)
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
                if self.connection.our_state is h11.MUST_CLOSE:
                    self.peer.close()
                    break
                self.connection.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
        return True

    def _violation(self, message: str) -> None:
        self._broken = True
        self.violations.append("%s; the backend got %r" % (message, self.raw[-2000:]))
        self.peer.transport.abortConnection()

    def _request(self, event: h11.Request) -> None:
        self._counter[0] += 1
        number = self._current = self._counter[0]
        self._method = event.method
        headers = [(name, value) for name, value in event.headers.raw_items()]
        self.requests.append((number, event.method, event.target, headers))
        problems = checkBackendHead(event.method, event.target, event.http_version, headers)
        if problems:
            self._violation("; ".join(problems))

    def _answer(self) -> None:
        number = self._current
        body = b"answer %d\n" % (number,)
        send = self.connection.send
        data = send(
            h11.Response(
                status_code=200,
                headers=[
                    (b"Content-Length", b"%d" % (len(body),)),
                    (b"X-Seen", b"%d" % (number,)),
                ],
            )
        )
        if self._method != b"HEAD":
            data += send(h11.Data(data=body))
        data += send(h11.EndOfMessage())
        self.answered.append(number)
        self.peer.send(data)


def checkBackendHead(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
) -> list[str]:
    """
    What is wrong with a request head that reached a backend, beyond what
    h11 checks itself: a method that is not a token, a target that is not
    in origin form or holds SP, CTL or non-ASCII bytes, a header name that
    is not a token or a value with CR, LF or NUL, not exactly one C{Host},
    and both C{Content-Length} and C{Transfer-Encoding}.
    """
    problems = []
    if not TOKEN.match(method):
        problems.append("method %r is not a token" % (method,))
    if not _ORIGIN_TARGET.match(target):
        problems.append("target %r is not an origin-form target of visible ASCII" % (target,))
    if version != b"1.1":
        problems.append("version %r is not 1.1" % (version,))
    names = [name.lower() for name, value in headers]
    for name, value in headers:
        if not TOKEN.match(name):
            problems.append("header name %r is not a token" % (name,))
        if not _FIELD_VALUE.match(value):
            problems.append("header %r has a value with CR, LF or NUL: %r" % (name, value))
        elif _CTL.search(value):
            problems.append("header %r has a value with a control character: %r" % (name, value))
    if names.count(b"host") != 1:
        problems.append("%d Host headers" % (names.count(b"host"),))
    if b"content-length" in names and b"transfer-encoding" in names:
        problems.append("both Content-Length and Transfer-Encoding")
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit() and int(value) >= 2**63:
            problems.append("Content-Length %r does not fit 63 bits" % (value,))
    return problems


@attrs.frozen
class Response:
    """
    A response as a client read it.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


class MalformedResponse(Exception):
    """
    What the client got is not a well-formed HTTP/1.x response.
    """


def readResponses(
    data: bytes, closed: bool, heads: Iterable[bool] = ()
) -> list[Response]:
    """
    Read the responses of an HTTP/1.x client's connection strictly: status
    line, header names and values, framing by C{Content-Length}, chunked or
    (only when the connection closed) by the close, and nothing left over.
    Interim (1xx) responses are skipped.

    @param closed: Whether the connection is closed after C{data}.
    @param heads: For each final response in turn, whether it answers a
        C{HEAD} (and so has no body).

    @raise MalformedResponse: if it is not so.
    """
    heads = list(heads)
    responses: list[Response] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end == -1:
            raise MalformedResponse("incomplete head: %r" % (data[:300],))
        lines = data[:end].split(b"\r\n")
        data = data[end + 4 :]
        match = _STATUS_LINE.match(lines[0])
        if match is None:
            raise MalformedResponse("bad status line %r" % (lines[0][:300],))
        status = int(match.group(1))
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.match(name) or not _FIELD_VALUE.match(value):
                raise MalformedResponse("bad header line %r" % (line[:300],))
            headers.append((name, value.strip(b" \t")))
        if 100 <= status < 200:
            continue
        head = heads[len(responses)] if len(responses) < len(heads) else False
        lowered = [(name.lower(), value) for name, value in headers]
        lengths = [value for name, value in lowered if name == b"content-length"]
        codings = [value for name, value in lowered if name == b"transfer-encoding"]
        if lengths and codings:
            raise MalformedResponse("both Content-Length and Transfer-Encoding")
        if head or status in (204, 304):
            body = b""
        elif codings:
            if [c.strip().lower() for c in b",".join(codings).split(b",")] != [b"chunked"]:
                raise MalformedResponse("transfer coding %r" % (codings,))
            body, data = _readChunked(data)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise MalformedResponse("bad Content-Length %r" % (lengths,))
            length = int(lengths[0])
            if len(data) < length:
                raise MalformedResponse("body shorter than its Content-Length")
            body, data = data[:length], data[length:]
        else:
            if not closed:
                raise MalformedResponse("body delimited by a close that did not happen")
            body, data = data, b""
        responses.append(Response(status, tuple(headers), body))
    return responses


def _readChunked(data: bytes) -> tuple[bytes, bytes]:
    body = []
    while True:
        end = data.find(b"\r\n")
        if end == -1:
            raise MalformedResponse("incomplete chunk size line")
        size = data[:end].split(b";", 1)[0]
        if not _HEX.match(size):
            raise MalformedResponse("bad chunk size %r" % (size[:40],))
        length = int(size, 16)
        data = data[end + 2 :]
        if length == 0:
            end = data.find(b"\r\n\r\n") if data[:2] != b"\r\n" else -2
            if end == -1:
                raise MalformedResponse("incomplete trailers")
            return b"".join(body), data[end + 4 :]
        if len(data) < length + 2 or data[length : length + 2] != b"\r\n":
            raise MalformedResponse("incomplete or unterminated chunk")
        body.append(data[:length])
        data = data[length + 2 :]


class _Transport(StringTransport):
    """
    An in-memory transport that closes as a real one does: C{loseConnection}
    and C{abortConnection} only start the close, and the protocol hears of
    it later, from the harness's loop (L{Harness.pump}), not from inside its
    own call.
    """

    def __init__(self, protocol, closing: list, peerAddress=None):
        super().__init__(peerAddress=peerAddress)
        self.protocol = protocol
        self._closing = closing
        self._lost = False

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._closing.append((self, ConnectionDone("closed")))

    def abortConnection(self) -> None:
        # What was written and not yet read is lost with the connection.
        self.clear()
        self.aborting = True
        if not self.disconnecting:
            self.disconnecting = True
            self._closing.append((self, ConnectionLost("aborted")))

    def pauseProducing(self) -> None:
        # A real transport lets itself be paused and resumed while it closes.
        if not self._lost:
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if not self._lost:
            self.producerState = "producing"

    def unregisterProducer(self) -> None:
        # A real transport does not mind being told twice.
        self.producer = None
        self.streaming = None

    def lose(self, reason: Exception) -> bool:
        """
        Deliver the close to the protocol, once; whether it was the first.
        """
        if self._lost:
            return False
        self._lost = True
        self.connected = False
        self.disconnecting = True
        self.protocol.connectionLost(Failure(reason))
        return True


class Harness:
    """
    A L{MemoryBalancer} whose backend connections are all accepted by
    L{ValidatingBackend}s, driven until nothing moves.
    """

    def __init__(self, config: Config):
        self.lb = MemoryBalancer(config)
        self.backends: list[ValidatingBackend] = []
        self.clients: list[MemoryPeer] = []
        self._counter = [0]
        self._closing: list = []

    def _connect(self, factory, address) -> MemoryPeer:
        protocol = factory.buildProtocol(address)
        transport = _Transport(protocol, self._closing, peerAddress=address)
        protocol.makeConnection(transport)
        return _Peer(protocol, transport)

    def client(self, h2: bool = False) -> MemoryPeer:
        """
        A new client connection; C{h2} as if TLS had negotiated C{h2}.
        """
        address = IPv4Address("TCP", "127.0.0.1", 50000 + len(self.clients))
        peer = self._connect(self.lb.balancer.site, address)
        if h2:
            peer.transport.negotiatedProtocol = b"h2"
        self.clients.append(peer)
        return peer

    def _acceptBackend(self) -> ValidatingBackend:
        host, port, factory, timeout, bindAddress = self.lb._takeAttempt(0)
        peer = self._connect(factory, IPv4Address("TCP", host, port))
        return ValidatingBackend(peer, self._counter)

    def pump(self) -> None:
        """
        Let the balancer's work of now run, backends connect, read and
        answer, connections close, until nothing more happens.
        """
        for _ in range(10000):
            self.advance(0)
            moved = False
            while self.lb.pendingConnections():
                self.backends.append(self._acceptBackend())
                moved = True
            while self._closing:
                transport, reason = self._closing.pop(0)
                moved = transport.lose(reason) or moved
            for client in self.clients:
                moved = client.deliver() or moved
            for backend in self.backends:
                moved = backend.pump() or moved
            if not moved:
                return
        raise AssertionError("the balancer and its backends never settle")

    def advance(self, seconds: float) -> None:
        """
        Move the clock on by C{seconds} and run the calls that fall due; one
        that raises is logged and the others still run, as the reactor
        does.
        """
        reactor = self.lb.reactor
        while True:
            try:
                reactor.advance(seconds)
            except Exception:
                log.failure("Unhandled error in a timed call")
                seconds = 0
            else:
                return

    def settle(self, seconds: float = 400.0, step: float = 5.0) -> None:
        """
        Let C{seconds} pass, in steps, so that every timeout runs out.
        """
        self.pump()
        elapsed = 0.0
        while elapsed < seconds:
            self.advance(step)
            elapsed += step
            self.pump()

    @property
    def violations(self) -> list[str]:
        return [v for backend in self.backends for v in backend.violations]

    @property
    def answered(self) -> list[int]:
        return sorted(n for backend in self.backends for n in backend.answered)

    @property
    def backendRequests(self) -> list[tuple[int, bytes, bytes, list]]:
        return [r for backend in self.backends for r in backend.requests]

    def leaks(self) -> list[str]:
        """
        What the balancer still holds for clients that are gone: backend
        connections open and not idle in their pool, servers counted busy,
        connection attempts under way, clients' connections open.
        """
        problems = []
        idle = set()
        for pool in self.lb.balancer.pools.values():
            for server in pool.servers:
                idle.update(id(c) for c in server.connections._idle)
                if server.active:
                    problems.append("server %s still has %d active" % (server.name, server.active))
        for backend in self.backends:
            protocol = getattr(backend.peer.protocol, "_wrappedProtocol", backend.peer.protocol)
            if backend.open and id(protocol) not in idle:
                problems.append("a busy backend connection is still open")
        if self.lb.pendingConnections():
            problems.append("connection attempts still pending")
        for client in self.clients:
            if client.connected:
                problems.append("a client connection is still open")
        return problems

    def close(self) -> None:
        self.lb.balancer.close()


class _Peer(MemoryPeer):
    """
    A L{MemoryPeer} on a L{_Transport}; what it sends waits while the
    balancer has paused reading from it, as the network would hold it.
    """

    def __init__(self, protocol, transport):
        super().__init__(protocol, transport)
        self.outbox: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.outbox.append(data)
        self.deliver()

    def deliver(self) -> bool:
        """
        Pass on what waits, unless reading is paused; whether any went.
        """
        delivered = False
        while self.outbox and self.connected and self.transport.producerState != "paused":
            delivered = True
            try:
                self.protocol.dataReceived(self.outbox.pop(0))
            except Exception:
                # As the reactor does: log, and drop the connection.
                log.failure("Unhandled error in dataReceived")
                self.transport.lose(ConnectionLost("dataReceived failed"))
        return delivered

    def close(self) -> None:
        self.transport.lose(ConnectionDone("closed by the peer"))

    def reset(self) -> None:
        self.transport.lose(ConnectionLost("reset by the peer"))


def checkQuiet(flushLoggedErrors: Callable[[], list]) -> None:
    """
    Fail with the errors logged during the example, if any (and flush them,
    so that the test as a whole does not also fail for them).
    """
    errors = flushLoggedErrors()
    if errors:
        raise AssertionError(
            "unhandled errors were logged:\n"
            + "\n".join(error.getTraceback() for error in errors)
        )


class MalformedFrames(Exception):
    """
    What an HTTP/2 client got is not a well-formed sequence of frames.
    """


_RESPONSE_NAME = re.compile(rb"(?::status|[!#$%&'*+.^_`|~0-9a-z-]+)\Z")


@attrs.define
class H2Stream:
    """
    What came back on one HTTP/2 stream.
    """

    headers: list[tuple[bytes, bytes]] | None = None
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers or () if key == name]


@attrs.define
class H2Answer:
    """
    Everything an HTTP/2 client got, by stream, and the GOAWAY if any.
    """

    streams: dict[int, H2Stream] = attrs.Factory(dict)
    goaway: int | None = None


def readH2(data: bytes) -> H2Answer:
    """
    Read what the proxy sent to an HTTP/2 client, strictly: whole frames of
    known types, header blocks that decode (HEADERS then CONTINUATION until
    END_HEADERS), and response headers with a 3-digit C{:status}, names in
    lower case and values without CR, LF or NUL.

    @raise MalformedFrames: if it is not so.
    """
    import hpack
    import hyperframe.exceptions
    import hyperframe.frame as hf

    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    answer = H2Answer()
    block = None
    view = memoryview(data)
    while view:
        if len(view) < 9:
            raise MalformedFrames("incomplete frame header %r" % (bytes(view),))
        try:
            frame, length = hf.Frame.parse_frame_header(view[:9], strict=True)
            if len(view) < 9 + length:
                raise MalformedFrames("incomplete frame %r" % (frame,))
            frame.parse_body(view[9 : 9 + length])
        except (hyperframe.exceptions.HyperframeError, ValueError) as e:
            raise MalformedFrames("bad frame: %s" % (e,))
        view = view[9 + length :]
        if block is not None and not isinstance(frame, hf.ContinuationFrame):
            raise MalformedFrames("a header block is interrupted by %r" % (frame,))
        stream = None
        if frame.stream_id:
            stream = answer.streams.setdefault(frame.stream_id, H2Stream())
        if isinstance(frame, (hf.HeadersFrame, hf.ContinuationFrame)):
            if isinstance(frame, hf.ContinuationFrame) and block is None:
                raise MalformedFrames("CONTINUATION without HEADERS")
            if isinstance(frame, hf.HeadersFrame):
                block = [frame.stream_id, b"", "END_STREAM" in frame.flags]
            block[1] += frame.data
            if "END_HEADERS" in frame.flags:
                streamId, fragment, ended = block
                block = None
                try:
                    headers = decoder.decode(fragment, raw=True)
                except Exception as e:
                    raise MalformedFrames("header block does not decode: %s" % (e,))
                _checkH2Response(headers)
                target = answer.streams[streamId]
                if target.headers is None or not target.header(b":status")[0].startswith(b"1"):
                    target.headers = headers
                target.ended = target.ended or ended
        elif isinstance(frame, hf.DataFrame):
            stream.data += frame.data
            stream.ended = stream.ended or "END_STREAM" in frame.flags
        elif isinstance(frame, hf.RstStreamFrame):
            stream.reset = frame.error_code
        elif isinstance(frame, hf.GoAwayFrame):
            answer.goaway = frame.last_stream_id
    if block is not None:
        raise MalformedFrames("a header block never ends")
    return answer


def _checkH2Response(headers: list[tuple[bytes, bytes]]) -> None:
    statuses = [value for name, value in headers if name == b":status"]
    if len(statuses) != 1 or not re.match(rb"[1-5][0-9][0-9]\Z", statuses[0]):
        raise MalformedFrames("bad :status in %r" % (headers,))
    for name, value in headers:
        if not _RESPONSE_NAME.match(name) or not _FIELD_VALUE.match(value):
            raise MalformedFrames("bad response header %r: %r" % (name, value))
