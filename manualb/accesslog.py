"""
The access log: one line for each request, in nginx's combined format
followed by the upstream server and its response time (nginx's
C{$upstream_addr} and C{$upstream_response_time}):

    127.0.0.1 - - [24/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 12
    "-" "curl/8.0" 127.0.0.1:8081 0.002

(on one line).  A request that never reached a backend shows C{-} for both;
one tried on several servers lists them all, with their times, separated by
commas, as nginx does.

C{log_format} chooses another line (L{compileFormat}): C{json}, one JSON
object a line, or a format string of nginx's variables (L{VARIABLES}).
Every value is escaped, so that a hostile header cannot forge a line.

The log is reopened by L{AccessLog.reopen} (on C{SIGUSR1}, see
C{manualb.tap}) after it was renamed, as nginx's is; one that cannot be
written says so once in Twisted's log and drops lines until it is reopened.

With nginx's C{buffer=SIZE} (and C{flush=TIME}) after the target of
C{access_log} (L{parseAccessLog}), lines are collected in memory and written
together, as nginx writes them: when the next line would not fit, when the
oldest has waited C{flush}, and when the log is reopened, changed by a
reload, or closed (a graceful stop).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, BinaryIO, Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from manualb.records import Outcome
from manualb.syntax import durationValue, parseOptions, parseSize
from manualb.view import Passage, RequestView, clientHost

log = Logger()

_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
#: The bytes L{_escape} leaves as they are.
_SAFE = bytes([byte for byte in range(256) if _UNSAFE.match(bytes([byte])) is None])


def _escape(value: bytes) -> bytes:
    """
    Escape quotes, backslashes and bytes outside printable ASCII as
    C{\\xHH}, as nginx does, so a hostile header cannot forge log lines.
    """
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda match: b"\\x%02X" % (match.group()[0],), value)


# log_format.

#: The variables of a C{log_format} string, as nginx names them (each one
#: with C{$} in front); C{$http_NAME} gives the request's header C{NAME}
#: (C{-} for C{_}, any case).
VARIABLES: tuple[str, ...] = (
    "remote_addr",
    "time_local",
    "time_iso8601",
    "request",
    "request_method",
    "request_uri",
    "host",
    "status",
    "body_bytes_sent",
    "request_time",
    "upstream_addr",
    "upstream_status",
    "upstream_response_time",
    "request_id",
    "scheme",
    "server_protocol",
)

#: The fields of a C{json} line: every variable, and the two headers of
#: the combined line.
_JSON_FIELDS: tuple[str, ...] = VARIABLES + ("http_referer", "http_user_agent")
_JSON_NUMBERS = frozenset(["status", "body_bytes_sent"])

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]*))")


class _Line:
    """
    What the line of one request is made of, for a compiled format.
    """

    __slots__ = (
        "log",
        "view",
        "version",
        "status",
        "sent",
        "upstreams",
        "times",
        "passage",
        "requestLine",
    )

    def __init__(self, log, view, version, status, sent, upstreams, times, passage, requestLine):
        self.log = log
        self.view = view
        self.version = version
        self.status = status
        self.sent = sent
        self.upstreams = upstreams
        self.times = times
        self.passage = passage
        self.requestLine = requestLine


def _request(line: _Line) -> bytes:
    if line.requestLine is not None:
        return line.requestLine
    view = line.view
    return b"%s %s %s" % (view.method, view.target, line.version)


def _requestTime(line: _Line) -> bytes:
    started = line.view.started
    if not started:
        return b"-"
    return b"%.3f" % (max(0.0, line.log._clock() - started),)


def _upstreamStatus(line: _Line) -> bytes:
    """
    nginx's C{$upstream_status}: the status of each server tried, in order;
    502 for one that failed without a status (504 when it timed out), the
    status sent for the one that answered.
    """
    attempts = getattr(line.passage, "selection", None)
    leases = getattr(attempts, "leases", None)
    if not leases:
        return b"-"
    codes = []
    for lease in leases:
        cause = lease.cause or ""
        if cause.startswith("status "):
            codes.append(cause[7:].encode("ascii", "replace"))
        elif lease.outcome is Outcome.FAILED:
            codes.append(b"504" if "timed out" in cause else b"502")
        elif lease.outcome is Outcome.SUCCEEDED and line.status != 499:
            codes.append(b"%d" % (line.status,))
        else:
            codes.append(b"-")
    return b", ".join(codes)


def _header(name: bytes) -> Callable[[_Line], bytes]:
    def header(line: _Line) -> bytes:
        for key, value in line.view.headers:
            if key.lower() == name:
                return value
        return b"-"

    return header


_GETTERS: dict[str, Callable[[_Line], bytes]] = {
    "remote_addr": lambda line: (line.view.clientAddress or "-").encode("ascii", "replace"),
    "time_local": lambda line: line.log._timestamp()[1:-1],
    "time_iso8601": lambda line: line.log._isoTimestamp(),
    "request": _request,
    "request_method": lambda line: line.view.method or b"-",
    "request_uri": lambda line: line.view.target or b"-",
    "host": lambda line: line.view.host
    or line.view.localHost.encode("ascii", "replace")
    or b"-",
    "status": lambda line: b"%d" % (line.status,),
    "body_bytes_sent": lambda line: b"%d" % (line.sent,),
    "request_time": _requestTime,
    "upstream_addr": lambda line: ", ".join(line.upstreams).encode("ascii", "replace")
    if line.upstreams
    else b"-",
    "upstream_status": _upstreamStatus,
    "upstream_response_time": lambda line: b", ".join(b"%.3f" % (t,) for t in line.times)
    if line.times
    else b"-",
    "request_id": lambda line: getattr(line.passage, "requestId", b"") or b"-",
    "scheme": lambda line: b"https" if line.view.secure else b"http",
    "server_protocol": lambda line: line.version or b"-",
}


def _getter(name: str) -> Callable[[_Line], bytes]:
    """
    The escaped value of the variable C{name}, of a line.

    @raise ValueError: There is no such variable.
    """
    if name.startswith("http_") and len(name) > 5:
        raw = _header(name[5:].replace("_", "-").lower().encode("ascii"))
    else:
        try:
            raw = _GETTERS[name]
        except KeyError:
            raise ValueError(
                "unknown variable $%s in log_format; known: %s, and $http_NAME"
                % (name, ", ".join("$" + known for known in VARIABLES))
            ) from None

    def escaped(line: _Line) -> bytes:
        return _escape(raw(line))

    return escaped


def compileFormat(text: str) -> Callable[[_Line], bytes] | None:
    """
    Compile a C{log_format}: L{None} for C{combined} (the default line);
    C{json}, one JSON object a line, with a field for each of L{VARIABLES}
    and C{http_referer} and C{http_user_agent}; else a format string of
    text and nginx variables (C{$status} or C{${status}}), to which each
    line adds a newline.

    @return: What makes the line of a request.
    @raise ValueError: The format names an unknown variable, or is not
        ASCII.
    """
    name = text.strip()
    if name == "combined":
        return None
    if name == "json":
        fields = [(field, _getter(field)) for field in _JSON_FIELDS]

        def jsonLine(line: _Line) -> bytes:
            entry: dict[str, Any] = {}
            for field, get in fields:
                value = get(line)
                if field in _JSON_NUMBERS:
                    entry[field] = int(value)
                else:
                    entry[field] = value.decode("ascii")
            return json.dumps(entry, separators=(",", ":")).encode("ascii") + b"\n"

        return jsonLine
    if not text.isascii():
        raise ValueError("log_format must be ASCII (escape nothing: values are)")
    parts: list[bytes | Callable[[_Line], bytes]] = []
    position = 0
    for match in _VARIABLE.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()].encode("ascii"))
        variable = match.group(1) or match.group(2)
        if not variable:
            raise ValueError(
                "a $ in log_format must start a variable name, such as $status, "
                "at %r" % (text[match.start() : match.start() + 10],)
            )
        parts.append(_getter(variable))
        position = match.end()
    parts.append(text[position:].encode("ascii") + b"\n")

    def formatLine(line: _Line) -> bytes:
        return b"".join([part if part.__class__ is bytes else part(line) for part in parts])

    return formatLine


# access_log.

# The options after the target: trailing name=value words.
_OPTIONS = re.compile(r"(?:\s+[A-Za-z_]+=\S*)+$")


def _bufferSize(text: str) -> int:
    size = parseSize(text)
    if size <= 0:
        raise ValueError(f"must be greater than zero, got {text!r}")
    return size


_ACCESS_LOG_OPTIONS = {
    "buffer": (_bufferSize, "buffer=64k"),
    "flush": (durationValue, "flush=1s"),
}


def parseAccessLog(text: str) -> tuple[str | None, int, float | None]:
    """
    Read the value of C{access_log}: C{off}, C{-} for standard output, or
    the path of a file, then, as nginx's C{access_log}, C{buffer=SIZE} to
    collect lines in memory and write them together and C{flush=TIME} to
    write none later than that after it was logged (which needs a
    C{buffer}; without one, a buffered line waits until the buffer is
    full, the log reopened or closed, as in nginx).

    @return: The target (L{None} for C{off}), the buffer's size in bytes (0
        for none: each line is written as it comes) and the flush time in
        seconds (or L{None}).
    @raise ValueError: An option is unknown, given twice or bad; C{flush}
        comes without C{buffer}; C{off} has options.
    """
    text = text.strip()
    target, words = text, []
    options = _OPTIONS.search(text)
    if options is not None:
        target, words = text[: options.start()], options.group().split()
    chosen = parseOptions(words, _ACCESS_LOG_OPTIONS, text)
    buffer = chosen.get("buffer", 0)
    flush = chosen.get("flush")
    if target.lower() == "off":
        if words:
            raise ValueError(f"off takes no options, got {text!r}")
        return None, 0, None
    if flush is not None and not buffer:
        raise ValueError(
            f"flush= needs a buffer= to flush, as in nginx, in {text!r} "
            f"(such as buffer=64k flush=1s)"
        )
    assert isinstance(buffer, int)
    assert flush is None or isinstance(flush, float)
    return target, buffer, flush


# Outputs.

#: The combined line, followed by the upstream servers and their times.
_COMBINED = b'%s - - %s "%s" %d %d "%s" "%s" %s %s\n'


class _TwistedLogOutput:
    """
    Writes access log lines to Twisted's log (twistd's, when daemonised),
    as the messages of C{info} events.
    """

    def write(self, lines: bytes) -> None:
        for line in lines.splitlines():
            log.info("{line}", line=line.decode("ascii", "replace"))

    def close(self) -> None:
        pass


def standardOutput(daemon: bool) -> BinaryIO | _TwistedLogOutput:
    """
    Where C{access_log = -} writes: standard output in the foreground; a
    daemon's standard output goes nowhere (twistd points it at
    C{/dev/null}), so Twisted's log, which twistd writes to its log file,
    when daemonised.
    """
    if daemon:
        return _TwistedLogOutput()
    return os.fdopen(os.dup(sys.__stdout__.fileno()), "wb", buffering=0)


class AccessLog:
    """
    Writes access log lines to a binary file: unbuffered, each line one
    write, so that none is lost or torn when the process dies; or, with a
    C{buffer}, as nginx's buffered log does, lines collected in memory
    and written together (whole lines, in one write each time): when the
    next line would not fit (a line larger than the buffer is written
    alone), when the oldest has waited C{flush} seconds, and when the log
    is reopened, changed or closed.  Lines in the buffer are lost if the
    process dies without closing the log.

    A log given a C{target} opens it only when started (L{start}), so that
    building a balancer touches no file; lines written before that, or after
    L{close}, are dropped.  An output that cannot be written (a full disk, a
    closed standard output) is reported once in Twisted's log, and lines
    are dropped until the log is reopened (L{reopen}).

    @param output: Where lines go, or L{None} to open C{target} at L{start}.
    @param clock: Gives the current time, for C{$time_local}.
    @param target: C{-} for standard output, or the path of a file to
        append to.
    @param format: The C{log_format}, as L{compileFormat} takes it.
    @param buffer: How many bytes of lines to collect before writing them;
        0 writes each line as it comes.
    @param flush: How long, in seconds, a line may wait in the buffer
        before it is written; L{None} for as long as the buffer has room.
    @param reactor: What times C{flush}; needed with it.

    @ivar daemon: Whether the process runs as a daemon: C{-} then means
        Twisted's log (L{standardOutput}).  Set before L{start}.
    """

    daemon = False

    def __init__(
        self,
        output: BinaryIO | None = None,
        clock: Callable[[], float] = time.time,
        target: str | None = None,
        format: str = "combined",
        buffer: int = 0,
        flush: float | None = None,
        reactor: IReactorTime | None = None,
    ):
        self._output = output
        self._clock = clock
        self._target = target
        self._format = compileFormat(format)
        self._open = output is not None
        self._reactor = reactor
        self._buffer = 0
        self._flush: float | None = None
        self._buffering(buffer, flush)
        # The lines not written yet, and what writes them when flush has
        # passed.
        self._pending = bytearray()
        self._timer: IDelayedCall | None = None
        self._second = -1
        self._stamp = b""
        self._isoSecond = -1
        self._isoStamp = b""

    @classmethod
    def open(cls, target: str, clock: Callable[[], float] = time.time) -> "AccessLog":
        """
        An access log writing to standard output (C{-}) or appending to the
        file at C{target}, opened now.
        """
        log = cls(clock=clock, target=target)
        log.start()
        return log

    def start(self) -> None:
        """
        Open the target, unless the log is open already.

        @raise OSError: The file cannot be opened.
        """
        if self._output is not None or self._target is None:
            return
        if self._target == "-":
            self._output = standardOutput(self.daemon)
        else:
            self._output = open(self._target, "ab", buffering=0)
        self._open = True

    def _buffering(self, buffer: int, flush: float | None) -> None:
        if flush is not None and self._reactor is None:
            raise ValueError("an access log flushed on time needs a reactor")
        self._buffer = buffer
        self._flush = flush if buffer else None

    def reopen(self) -> None:
        """
        Open the file again, by its name, and close the one written until
        now: after the file was renamed (rotated), lines go to a new file of
        the old name.  A log that is not open, or writes to standard output
        that still works, stays as it is; when the file cannot be opened,
        the log says so and lines keep going where they went.  The lines
        of the buffer are written first, where the earlier ones went.
        """
        self.writePending()
        if not self._open or self._target is None:
            return
        old = self._output
        if self._target == "-" and old is not None:
            return
        self._output = None
        try:
            self.start()
        except OSError as e:
            self._output = old
            log.error(
                "access log: cannot reopen {target}: {error}",
                target=self._target,
                error=e.strerror or str(e),
            )
            return
        if old is not None:
            _closeQuietly(old)

    def change(
        self, target: str | None, format: str, buffer: int = 0, flush: float | None = None
    ) -> None:
        """
        Write to C{target} (as the constructor takes it) in C{format}, with
        C{buffer} and C{flush}, from now on, as a reload does: the lines of
        the buffer are written where they were going; then, when the log is
        open and the target differs, the new one is opened, then the old one
        closed.

        @raise OSError: The new target cannot be opened; nothing changed
            but the buffer's lines were written.
        """
        compiled = compileFormat(format)
        self.writePending()
        if target != self._target:
            old, oldTarget = self._output, self._target
            self._target = target
            if self._open:
                self._output = None
                try:
                    self.start()
                except OSError:
                    self._output, self._target = old, oldTarget
                    raise
                if old is not None:
                    _closeQuietly(old)
        self._format = compiled
        self._buffering(buffer, flush)

    def _timestamp(self) -> bytes:
        now = int(self._clock())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime(
                "[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now)
            ).encode("ascii")
        return self._stamp

    def _isoTimestamp(self) -> bytes:
        now = int(self._clock())
        if now != self._isoSecond:
            self._isoSecond = now
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
            self._isoStamp = (stamp[:-2] + ":" + stamp[-2:]).encode("ascii")
        return self._isoStamp

    def record(
        self,
        request: RequestView,
        version: bytes,
        status: int,
        sent: int,
        upstreams: Sequence[str],
        upstreamTimes: Sequence[float],
        passage: Passage | None = None,
    ) -> None:
        """
        Write the line for a finished (or abandoned) request.

        @param request: The request, as the stages saw it.
        @param version: The protocol the client spoke (C{HTTP/1.1}).
        @param status: The status sent, or the one that stands for what
            happened (499: the client went away first).
        @param sent: How many bytes of response body went to the client.
        @param upstreams: The servers tried, in order.
        @param upstreamTimes: How long each try took, in seconds.
        @param passage: What the stages learned of the request (its id, the
            servers tried), for the variables of a C{log_format}.
        """
        format = self._format
        if format is not None:
            self._emit(
                format(
                    _Line(
                        self, request, version, status, sent, upstreams,
                        upstreamTimes, passage, None,
                    )
                )
            )
            return
        # The first Referer and User-Agent, in one pass over the headers.
        referer = agent = None
        for name, value in request.headers:
            length = len(name)
            if length == 10:
                if agent is None and name.lower() == b"user-agent":
                    agent = value
            elif length == 7 and referer is None and name.lower() == b"referer":
                referer = value
        requestLine = b"%s %s %s" % (request.method, request.target, version)
        if referer is None:
            referer = b"-"
        if agent is None:
            agent = b"-"
        # One pass tells the usual line, which needs no escape: what is left
        # once the safe bytes are taken out.
        if b"".join((requestLine, referer, agent)).translate(None, _SAFE):
            requestLine, referer, agent = _escape(requestLine), _escape(referer), _escape(agent)
        if not upstreams:
            servers = b"-"
        elif len(upstreams) == 1:
            servers = upstreams[0].encode("ascii")
        else:
            servers = ", ".join(upstreams).encode("ascii")
        if not upstreamTimes:
            times = b"-"
        elif len(upstreamTimes) == 1:
            times = b"%.3f" % (upstreamTimes[0],)
        else:
            times = b", ".join([b"%.3f" % (t,) for t in upstreamTimes])
        self._emit(
            _COMBINED
            % (
                (request.clientAddress or "-").encode("ascii", "replace"),
                self._timestamp(),
                requestLine,
                status,
                sent,
                referer,
                agent,
                servers,
                times,
            )
        )

    def recordUnread(
        self, address, requestLine: bytes | None, status: int, sent: int
    ) -> None:
        """
        Write the line for a request refused before it could be read whole
        (a request line or header block too large, bad syntax, too slow):
        its request line when it was read, else C{-}.
        """
        format = self._format
        if format is not None:
            method, _, rest = (requestLine or b"").partition(b" ")
            target, _, version = rest.partition(b" ")
            self._emit(
                format(
                    _Line(
                        self, RequestView(clientHost(address), method=method, target=target),
                        version, status, sent, (), (), None, requestLine or b"-",
                    )
                )
            )
            return
        self._write(
            clientHost(address), requestLine or b"-", status, sent, b"-", b"-", b"-", b"-"
        )

    def _write(
        self,
        address: str,
        requestLine: bytes,
        status: int,
        sent: int,
        referer: bytes,
        agent: bytes,
        upstreams: bytes,
        upstreamTimes: bytes,
    ) -> None:
        line = _COMBINED % (
            (address or "-").encode("ascii", "replace"),
            self._timestamp(),
            _escape(requestLine),
            status,
            sent,
            _escape(referer),
            _escape(agent),
            upstreams,
            upstreamTimes,
        )
        self._emit(line)

    def _emit(self, line: bytes) -> None:
        buffer = self._buffer
        pending = self._pending
        if not buffer or len(pending) + len(line) > buffer:
            if self._output is None:
                return
            if not buffer:
                self._writeOut(line)
                return
            # The line does not fit: what is kept goes first.
            if pending:
                self.writePending()
            if len(line) > buffer:
                self._writeOut(line)
                return
            pending = self._pending
        if self._output is None:
            return
        pending += line
        if self._timer is None and self._flush is not None:
            assert self._reactor is not None
            self._timer = self._reactor.callLater(self._flush, self._flushed)

    def _flushed(self) -> None:
        self._timer = None
        self.writePending()

    def writePending(self) -> None:
        """
        Write the lines of the buffer now.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        pending = self._pending
        if pending:
            self._pending = bytearray()
            self._writeOut(pending)

    def _writeOut(self, data: bytes | bytearray) -> None:
        output = self._output
        if output is None:
            return
        try:
            written = output.write(data)
            # A file takes part of a write only when it cannot take more
            # (a full disk): the next one says why.
            while written and written < len(data):
                data = memoryview(data)[written:]
                written = output.write(data)
        except (OSError, ValueError) as e:
            self._failed(e)

    def _failed(self, error: Exception) -> None:
        """
        The output cannot be written: say so once, and drop lines (those
        of the buffer too) until the log is reopened.
        """
        output, self._output = self._output, None
        self._pending = bytearray()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        log.error(
            "access log: cannot write to {target}: {error}; lines are dropped "
            "until it is reopened (SIGUSR1)",
            target="standard output" if self._target in (None, "-") else self._target,
            error=getattr(error, "strerror", None) or str(error) or error.__class__.__name__,
        )
        if output is not None:
            _closeQuietly(output)

    def close(self) -> None:
        """
        Write the lines of the buffer and close the output; a log with a
        target can be started again.
        """
        self.writePending()
        output = self._output
        self._open = False
        if output is not None:
            if self._target is not None:
                self._output = None
            output.close()


def _closeQuietly(output) -> None:
    try:
        output.close()
    except (OSError, ValueError):
        pass
