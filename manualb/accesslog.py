"""
The access log: one line for each request, in nginx's combined format
followed by the upstream server and its response time (nginx's
C{$upstream_addr} and C{$upstream_response_time}):

    127.0.0.1 - - [24/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 12
    "-" "curl/8.0" 127.0.0.1:8081 0.002

(on one line).  A request that never reached a backend shows C{-} for both;
one tried on several servers lists them all, with their times, separated by
commas, as nginx does.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import BinaryIO, Callable, Sequence

from manualb.view import RequestView, clientHost

_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def _escape(value: bytes) -> bytes:
    """
    Escape quotes, backslashes and bytes outside printable ASCII as
    C{\\xHH}, as nginx does, so a hostile header cannot forge log lines.
    """
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda match: b"\\x%02X" % (match.group()[0],), value)


class AccessLog:
    """
    Writes access log lines to a binary file, unbuffered: each line is one
    write, so none is lost or torn when the process dies.

    A log given a C{target} opens it only when started (L{start}), so that
    building a balancer touches no file; lines written before that, or after
    L{close}, are dropped.

    @param output: Where lines go, or L{None} to open C{target} at L{start}.
    @param clock: Gives the current time, for C{$time_local}.
    @param target: C{-} for standard output, or the path of a file to
        append to.
    """

    def __init__(
        self,
        output: BinaryIO | None = None,
        clock: Callable[[], float] = time.time,
        target: str | None = None,
    ):
        self._output = output
        self._clock = clock
        self._target = target
        self._second = -1
        self._stamp = b""

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
            self._output = os.fdopen(os.dup(sys.__stdout__.fileno()), "wb", buffering=0)
        else:
            self._output = open(self._target, "ab", buffering=0)

    def _timestamp(self) -> bytes:
        now = int(self._clock())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime(
                "[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now)
            ).encode("ascii")
        return self._stamp

    def record(
        self,
        request: RequestView,
        version: bytes,
        status: int,
        sent: int,
        upstreams: Sequence[str],
        upstreamTimes: Sequence[float],
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
        """
        self._write(
            request.clientAddress,
            b"%s %s %s" % (request.method, request.target, version),
            status,
            sent,
            (request.header(b"referer") or [b"-"])[0],
            (request.header(b"user-agent") or [b"-"])[0],
            ", ".join(upstreams).encode("ascii") if upstreams else b"-",
            b", ".join(b"%.3f" % (t,) for t in upstreamTimes) if upstreamTimes else b"-",
        )

    def recordUnread(
        self, address, requestLine: bytes | None, status: int, sent: int
    ) -> None:
        """
        Write the line for a request refused before it could be read whole
        (a request line or header block too large, bad syntax, too slow):
        its request line when it was read, else C{-}.
        """
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
        line = b'%s - - %s "%s" %d %d "%s" "%s" %s %s\n' % (
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
        if self._output is not None:
            self._output.write(line)

    def close(self) -> None:
        """
        Close the output; a log with a target can be started again.
        """
        output = self._output
        if output is not None:
            if self._target is not None:
                self._output = None
            output.close()
