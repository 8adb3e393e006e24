"""
The HTTP/1.1 response parser of backend connections, without I/O.

A L{ResponseParser} is told what request a response answers (L{expect}), fed
the bytes of the connection as they come (L{feed}, then L{feedEOF} when the
connection closes), and tells an L{IResponseEvents} what it found: the head,
the pieces of the body with their framing removed, and the end of the
message with whether the connection may carry another.  Bytes that cannot be
a valid response raise L{ResponseParseError}, and nothing else: the caller
fails the exchange with its reason.

It does the framing of RFC 9112 as a proxy must, strictly:
- the body's length from C{Transfer-Encoding} (chunked, with chunk
  extensions and trailers, which are dropped; or any other coding, read
  until the connection closes), else from C{Content-Length} (repeated
  values must agree), else up to the close of the connection;
- no body for an answer to C{HEAD}, nor for a C{204} or C{304};
- interim C{1xx} responses are skipped, except a C{101 Switching Protocols}
  to a request that asked for an upgrade, after which the connection is no
  longer HTTP (see L{ResponseParser.trailing});
- a head is at most C{maxHeadSize} bytes, a chunk framing line at most
  L{MAX_CHUNK_LINE};
- a connection is reusable after a response only when it was HTTP/1.1, did
  not say C{Connection: close}, was not delimited by the close, did not
  carry both C{Transfer-Encoding} and C{Content-Length}, and was not
  followed by more bytes in the same feed.

Another parser (one built on llhttp, say) can take its place behind
L{IResponseParser}.
"""

from __future__ import annotations

import enum
import re
from operator import itemgetter
from typing import NoReturn

from zope.interface import Attribute, Interface, implementer

from manualb.forwarding import connectionTokens

__all__ = [
    "IResponseEvents",
    "IResponseParser",
    "MAX_CHUNK_LINE",
    "MAX_HEAD_SIZE",
    "ParserState",
    "ResponseParseError",
    "ResponseParser",
]

MAX_HEAD_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
#: The bytes of a token (RFC 9110, section 5.6.2).
_TOKEN_BYTES = b"!#$%&'*+.^_`|~-" + bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123))
_NAME = itemgetter(0)
_FORBIDDEN_IN_VALUE = re.compile(rb"[\0\r\n]")


class ResponseParseError(Exception):
    """
    The bytes cannot be a valid HTTP/1.1 response: the message is the
    reason, fit for a log line.  The parser takes nothing more for this
    response.
    """


def _ignore(*args: object) -> None:
    pass


def _badName(lines: list[bytes]) -> NoReturn:
    """
    Raise the error for the first of a head's header C{lines} whose name is
    not a token.
    """
    for line in lines[1:]:
        if not _TOKEN.match(line.partition(b":")[0]):
            raise ResponseParseError("bad header line %r" % (line[:80],))
    raise AssertionError("no bad header name in %r" % (lines,))


def _badControl(lines: list[bytes]) -> NoReturn:
    """
    Raise the error for the first of a head's C{lines} that holds a NUL, or a
    CR or LF that does not end it.
    """
    for number, line in enumerate(lines):
        if _FORBIDDEN_IN_VALUE.search(line):
            kind = "header" if number else "status"
            raise ResponseParseError("bad %s line %r" % (kind, line[:80]))
    raise AssertionError("no control character in %r" % (lines,))


class IResponseEvents(Interface):
    """
    What a L{IResponseParser} finds, in order: one head, its body in pieces,
    the end.  Each method may stop the parser (L{IResponseParser.stop}), after
    which it calls none of them again for this response.
    """

    def headReceived(code, reason, headers):
        """
        The final head has arrived (interim C{1xx} heads are not passed on,
        except a C{101} that the request asked for).

        @param code: The status code, from 100 to 999.
        @param reason: The reason phrase, possibly empty.
        @param headers: The C{(name, value)} byte pairs, in order, repeated
            names kept, values without surrounding blanks; without
            C{Transfer-Encoding}, whose framing the parser removes, nor a
            C{Content-Length} that C{Transfer-Encoding} overrides.
        """

    def bodyReceived(data):
        """
        A piece of the body, never empty, with any chunked framing removed.
        """

    def messageEnded(reusable):
        """
        The response is complete.  C{reusable} tells whether the connection,
        as far as this response goes, may carry another exchange.  (Not
        called after a C{101}: the connection is then no longer HTTP.)
        """


class IResponseParser(Interface):
    """
    A sans-IO parser of the responses on one backend connection.
    """

    state = Attribute("The L{ParserState} it is in.")
    started = Attribute(
        "Whether any byte of the current response (after interim ones) has "
        "come: a connection closed before that may just have been an idle "
        "connection the backend gave up."
    )
    trailing = Attribute(
        "What the backend sent after the head of a C{101} (the start of the "
        "protocol it switched to), or after the end of a response."
    )

    def expect(method, upgrade):
        """
        Read the response to a request of C{method} (bytes); C{upgrade} when
        it asks for a protocol upgrade, so that a C{101} is allowed.
        """

    def feed(data):
        """
        Parse C{data}, calling the L{IResponseEvents} as far as it goes.

        @raise ResponseParseError: The response is malformed, or came when
            none was expected.
        """

    def feedEOF():
        """
        The connection has closed cleanly.

        @return: C{True} when that ended the response (a body delimited by
            the close), after calling C{messageEnded}; C{False} when the
            response is incomplete (or none was expected).
        """

    lengthLeft = Attribute(
        "How many bytes of a body of known length are still to come; 0 for "
        "any other body, or none."
    )

    def bodyPassed(size):
        """
        C{size} bytes of a body of known length went on without being fed:
        count them, and end the message with the last.
        """

    def stop():
        """
        Give up the current response: nothing more is passed on, also from
        a L{feed} under way, until the next L{expect}.
        """

    def detach():
        """
        L{stop}, and pass nothing on ever again, letting go of the events'
        receiver: for a connection that has closed.
        """


class ParserState(enum.Enum):
    """
    Where a L{ResponseParser} is.  C{IDLE} -> (L{ResponseParser.expect})
    C{HEAD} -> one of the body states -> C{DONE}; C{HEAD} -> C{DONE} for a
    response without a body; C{HEAD} -> C{SWITCHED} after a C{101};
    C{CHUNK_SIZE} -> C{CHUNK_DATA} -> C{CHUNK_END} -> C{CHUNK_SIZE} ... ->
    C{TRAILERS} -> C{DONE}.  Any state -> C{IDLE} when stopped or after an
    error.
    """

    # Compared often: by identity, not by name as Enum does by default.
    __hash__ = object.__hash__

    IDLE = "idle"
    HEAD = "head"
    LENGTH = "length"
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    CHUNK_END = "chunk end"
    TRAILERS = "trailers"
    UNTIL_CLOSE = "until close"
    DONE = "done"
    SWITCHED = "switched"


_IDLE = ParserState.IDLE
_HEAD = ParserState.HEAD
_LENGTH = ParserState.LENGTH
_CHUNK_SIZE_LINE = ParserState.CHUNK_SIZE
_CHUNK_DATA = ParserState.CHUNK_DATA
_CHUNK_END = ParserState.CHUNK_END
_TRAILERS = ParserState.TRAILERS
_UNTIL_CLOSE = ParserState.UNTIL_CLOSE
_DONE = ParserState.DONE
_SWITCHED = ParserState.SWITCHED


@implementer(IResponseParser)
class ResponseParser:
    """
    The HTTP/1.1 response parser of L{manualb.handoff}: see the module's
    docstring for what it accepts.

    @ivar state: The L{ParserState}.
    @ivar trailing: See L{IResponseParser.trailing}.
    """

    def __init__(self, events: IResponseEvents, maxHeadSize: int = MAX_HEAD_SIZE):
        self._headReceived = events.headReceived
        self._bodyReceived = events.bodyReceived
        self._messageEnded = events.messageEnded
        self._maxHeadSize = maxHeadSize
        self.state = _IDLE
        self.trailing = b""
        self._buffer = b""
        self._scanned = 0
        self._remaining = 0
        self._method = b""
        self._upgrade = False
        self._keepAlive = False

    @property
    def started(self) -> bool:
        return self.state is not _HEAD or bool(self._buffer)

    def expect(self, method: bytes, upgrade: bool = False) -> None:
        self._method = method
        self._upgrade = upgrade
        self.state = _HEAD
        self.trailing = b""
        self._buffer = b""
        self._scanned = 0

    def stop(self) -> None:
        self.state = _IDLE
        self._buffer = b""
        self._scanned = 0

    def detach(self) -> None:
        self.stop()
        self._headReceived = self._bodyReceived = self._messageEnded = _ignore

    @property
    def lengthLeft(self) -> int:
        """
        How many bytes of a body of known length (C{Content-Length}) are
        still to come; 0 for any other body, or none.
        """
        return self._remaining if self.state is _LENGTH else 0

    def bodyPassed(self, size: int) -> None:
        """
        C{size} more bytes of a body of known length went on without passing
        through the parser (moved from socket to socket by the kernel): count
        them, and end the message with the last.
        """
        self._remaining -= size
        if self._remaining <= 0 and self.state is _LENGTH:
            self._end(b"")

    def feedEOF(self) -> bool:
        if self.state is not _UNTIL_CLOSE:
            return False
        self.state = _DONE
        self._messageEnded(False)
        return True

    def feed(self, data: bytes) -> None:
        state = self.state
        if state is _IDLE or state is _DONE or state is _SWITCHED:
            if data:
                raise ResponseParseError("data when no response was expected")
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        try:
            while data:
                state = self.state
                if state is _LENGTH:
                    remaining = self._remaining
                    if len(data) < remaining:
                        self._remaining = remaining - len(data)
                        self._bodyReceived(data)
                        return
                    self._bodyReceived(data[:remaining])
                    if self.state is _LENGTH:
                        self._end(data[remaining:])
                    return
                elif state is _UNTIL_CLOSE:
                    self._bodyReceived(data)
                    return
                elif state is _CHUNK_DATA:
                    remaining = self._remaining
                    if len(data) < remaining:
                        self._remaining = remaining - len(data)
                        self._bodyReceived(data)
                        return
                    self._bodyReceived(data[:remaining])
                    if self.state is not _CHUNK_DATA:
                        return
                    data = data[remaining:]
                    self.state = _CHUNK_END
                elif state is _HEAD:
                    end = data.find(b"\r\n\r\n", self._scanned)
                    if end == -1:
                        if len(data) > self._maxHeadSize:
                            raise ResponseParseError("response head too large")
                        self._buffer = data
                        # A head that comes in small pieces is not searched
                        # again from its start each time.
                        self._scanned = max(0, len(data) - 3)
                        return
                    self._scanned = 0
                    if end > self._maxHeadSize:
                        raise ResponseParseError("response head too large")
                    data = self._head(data[:end], data[end + 4 :])
                else:
                    # A line of chunked framing.  (The loop never sees the
                    # other states: after each event it checks whether the
                    # parser was stopped.)
                    end = data.find(b"\r\n")
                    if end == -1:
                        if len(data) > MAX_CHUNK_LINE:
                            raise ResponseParseError("chunk framing line too long")
                        self._buffer = data
                        return
                    line = data[:end]
                    data = data[end + 2 :]
                    if state is _CHUNK_SIZE_LINE:
                        self._chunkSize(line)
                    elif state is _CHUNK_END:
                        if line:
                            raise ResponseParseError("chunk data not followed by CRLF")
                        self.state = _CHUNK_SIZE_LINE
                    elif not line:  # _TRAILERS: an empty line ends them
                        self._end(data)
                        return
        except ResponseParseError:
            self.stop()
            raise

    def _end(self, rest: bytes) -> None:
        # Anything the backend sent past its response makes the connection
        # unusable for the next exchange.
        self.state = _DONE
        self.trailing = rest
        self._messageEnded(self._keepAlive and not rest)

    def _chunkSize(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].strip(b" \t")
        # Hexadecimal digits only: int() would also take a sign, a 0x, an
        # underscore or blanks inside.
        try:
            if not size.isalnum() or size[1:2] in (b"x", b"X"):
                raise ValueError(size)
            self._remaining = int(size, 16)
        except ValueError:
            raise ResponseParseError("bad chunk size %r" % (size[:20],)) from None
        self.state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _head(self, head: bytes, rest: bytes) -> bytes:
        """
        Parse a response head, choose how its body is framed and pass it on.

        @return: What is left to parse: C{rest}, or nothing when the parser
            stopped or the message ended.
        """
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ResponseParseError("bad status line %r" % (lines[0][:80],))
        version, codeText = parts[0], parts[1]
        if len(codeText) != 3 or not codeText.isdigit() or codeText < b"100":
            raise ResponseParseError("bad status code %r" % (codeText[:20],))
        code = int(codeText)
        reason = parts[2] if len(parts) == 3 else b""
        # No NUL, and no CR or LF but those that end lines, anywhere in the
        # head: looked for in all the lines at once, by two calls (join and
        # translate take their arguments faster than find and count).
        joined = b"".join(lines)
        if len(joined.translate(None, b"\r\n\0")) != len(joined):
            _badControl(lines)
        headers = []
        lengths = set()
        transferCodings: list[bytes] = []
        connection = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name:
                raise ResponseParseError("bad header line %r" % (line[:80],))
            value = value.strip(b" \t")
            size = len(name)
            # Only three names matter here: the others are not lowered.
            if size == 14 or size == 17 or size == 10:
                lowered = name.lower()
                if lowered == b"content-length":
                    if value.find(b",") != -1:
                        lengths.update(v.strip() for v in value.split(b","))
                    else:
                        lengths.add(value)
                elif lowered == b"transfer-encoding":
                    transferCodings.extend(
                        t.strip().lower() for t in value.split(b",") if t.strip()
                    )
                    continue
                elif lowered == b"connection":
                    connection.append(value)
            headers.append((name, value))

        # Every name a token: checked at once for all of them.
        if b"".join(map(_NAME, headers)).translate(None, _TOKEN_BYTES):
            _badName(lines)
        if code == 101:
            if not self._upgrade:
                raise ResponseParseError("unexpected 101 Switching Protocols")
            # From here on the backend speaks the protocol it switched to.
            self.state = _SWITCHED
            self.trailing = rest
            self._headReceived(code, reason, headers)
            return b""
        if code < 200:
            # An interim response: the real one follows.
            return rest

        keepAlive = version == b"HTTP/1.1" and b"close" not in connectionTokens(
            connection
        )
        if self._method == b"HEAD" or code == 204 or code == 304:
            state = _DONE
        elif transferCodings:
            # RFC 9112, section 6.3: Transfer-Encoding overrides any
            # Content-Length, which must then not be passed on.
            if lengths:
                headers = [h for h in headers if h[0].lower() != b"content-length"]
                keepAlive = False
            if transferCodings[-1] == b"chunked":
                state = _CHUNK_SIZE_LINE
            else:
                state = _UNTIL_CLOSE
        elif lengths:
            if len(lengths) != 1:
                raise ResponseParseError("conflicting Content-Length values")
            (length,) = lengths
            if not length.isdigit():
                raise ResponseParseError("bad Content-Length %r" % (length[:20],))
            self._remaining = int(length)
            state = _LENGTH if self._remaining else _DONE
        else:
            state = _UNTIL_CLOSE
        self._keepAlive = keepAlive and state is not _UNTIL_CLOSE
        self.state = state
        self._headReceived(code, reason, headers)
        if self.state is not state:
            return b""
        if state is _DONE:
            self._end(rest)
            return b""
        return rest
