"""
The sans-IO parser of backend responses, fed directly: whole, in pieces and
byte by byte, with hostile framing, and fuzzed.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb.responseparser import (
    IResponseEvents,
    IResponseParser,
    MAX_CHUNK_LINE,
    MAX_HEAD_SIZE,
    ParserState,
    ResponseParseError,
    ResponseParser,
)
from tests.fuzzing import fuzzSettings


@implementer(IResponseEvents)
class Events:
    """
    Records what a parser finds; optionally stops it at one kind of event.
    """

    def __init__(self, stopAt=None):
        self.log = []
        self.stopAt = stopAt
        self.parser = None

    def _event(self, kind, *args):
        self.log.append((kind,) + args)
        if kind == self.stopAt:
            self.parser.stop()

    def headReceived(self, code, reason, headers):
        self._event("head", code, reason, headers)

    def bodyReceived(self, data):
        assert data, "empty body piece"
        self._event("body", data)

    def messageEnded(self, reusable):
        self._event("end", reusable)

    @property
    def coalesced(self):
        """
        The log with consecutive body pieces joined: the same whatever the
        split of the input.
        """
        result = []
        for event in self.log:
            if event[0] == "body" and result and result[-1][0] == "body":
                result[-1] = ("body", result[-1][1] + event[1])
            else:
                result.append(event)
        return result


def parse(data, method=b"GET", upgrade=False, pieces=None, eof=False, stopAt=None):
    """
    Feed C{data} to a new parser expecting the answer to C{method}, whole or
    in pieces of C{pieces} bytes, then the close if C{eof}.

    @return: The L{Events}, the parser and the L{ResponseParseError} raised,
        if any.
    """
    events = Events(stopAt)
    parser = events.parser = ResponseParser(events)
    parser.expect(method, upgrade)
    raised = None
    try:
        if pieces is None:
            parser.feed(data)
        else:
            for i in range(0, len(data), pieces):
                parser.feed(data[i : i + pieces])
        if eof:
            parser.feedEOF()
    except ResponseParseError as e:
        raised = e
    return events, parser, raised


class ParserTestCase(SynchronousTestCase):
    def assertParses(self, data, expected, **kwargs):
        """
        C{data} gives the events C{expected}, whole and byte by byte.
        """
        for pieces in [None, 1]:
            events, parser, raised = parse(data, pieces=pieces, **kwargs)
            self.assertIsNone(raised, (pieces, raised))
            self.assertEqual(events.coalesced, expected, pieces)
        return parser

    def assertRefused(self, data, message, **kwargs):
        """
        C{data} raises L{ResponseParseError} with C{message} in its reason,
        whole and byte by byte, after which the parser takes nothing more.
        """
        for pieces in [None, 1]:
            events, parser, raised = parse(data, pieces=pieces, **kwargs)
            self.assertIsInstance(raised, ResponseParseError, (data[:60], pieces))
            self.assertIn(message, str(raised), pieces)
            self.assertIs(parser.state, ParserState.IDLE)
            self.assertRaises(ResponseParseError, parser.feed, b"more")


class FramingTests(ParserTestCase):
    def test_interface(self):
        events = Events()
        verifyObject(IResponseEvents, events)
        verifyObject(IResponseParser, ResponseParser(events))

    def test_contentLength(self):
        parser = self.assertParses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nA: 1\r\n\r\nhello",
            [
                ("head", 200, b"OK", [(b"Content-Length", b"5"), (b"A", b"1")]),
                ("body", b"hello"),
                ("end", True),
            ],
        )
        self.assertIs(parser.state, ParserState.DONE)
        self.assertEqual(parser.trailing, b"")

    def test_valuesTrimmedNamesKept(self):
        self.assertParses(
            b"HTTP/1.1 200 \r\nX-Case:  \t v a \t\r\nx-case:\r\nContent-Length: 0\r\n\r\n",
            [
                (
                    "head",
                    200,
                    b"",
                    [(b"X-Case", b"v a"), (b"x-case", b""), (b"Content-Length", b"0")],
                ),
                ("end", True),
            ],
        )

    def test_noReason(self):
        self.assertParses(
            b"HTTP/1.1 204\r\n\r\n", [("head", 204, b"", []), ("end", True)]
        )

    def test_chunked(self):
        """
        Chunked framing, with chunk extensions, upper- and lower-case hex and
        trailers, is removed, split at every point.
        """
        self.assertParses(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A \t;a=\"b\"\r\n" + b"x" * 26 + b"\r\n"
            b"a\r\n0123456789\r\n0\r\nX-Trailer: t\r\nY: u\r\n\r\n",
            [
                ("head", 200, b"OK", []),
                ("body", b"hello" + b"x" * 26 + b"0123456789"),
                ("end", True),
            ],
        )

    def test_chunkedEmpty(self):
        self.assertParses(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            [("head", 200, b"OK", []), ("end", True)],
        )

    def test_untilClose(self):
        """
        Without a length, the body lasts until the connection closes, and the
        connection cannot be reused.
        """
        events, parser, raised = parse(b"HTTP/1.1 200 OK\r\n\r\nsome", pieces=1)
        self.assertEqual(events.coalesced, [("head", 200, b"OK", []), ("body", b"some")])
        self.assertTrue(parser.feedEOF())
        self.assertEqual(events.log[-1], ("end", False))
        self.assertFalse(parser.feedEOF())

    def test_otherCodingUntilClose(self):
        """
        A last transfer coding other than chunked is read until the close.
        """
        self.assertParses(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            [("head", 200, b"OK", []), ("body", b"0\r\n\r\n"), ("end", False)],
            eof=True,
        )

    def test_transferEncodingOverridesLength(self):
        """
        RFC 9112, section 6.3: with both, the chunked framing counts,
        Content-Length is not passed on, and the connection is not reused.
        """
        self.assertParses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nA: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            [("head", 200, b"OK", [(b"A", b"1")]), ("body", b"ok"), ("end", False)],
        )

    def test_repeatedEqualLengths(self):
        self.assertParses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
            [
                ("head", 200, b"OK", [(b"Content-Length", b"2"), (b"Content-Length", b"2, 2")]),
                ("body", b"ok"),
                ("end", True),
            ],
        )

    def test_lengthsHostile(self):
        """
        Framing is read from C{Content-Length} however its name is cased and
        its value padded; a list that disagrees with itself, a value with a
        sign, blanks inside or a NUL is refused; and a header of the same
        length as C{Content-Length} but another name frames nothing.
        """
        self.assertParses(
            b"HTTP/1.1 200 OK\r\ncONTENT-lENGTH:\t 2 \t\r\n\r\nok",
            [("head", 200, b"OK", [(b"cONTENT-lENGTH", b"2")]), ("body", b"ok"), ("end", True)],
        )
        for value in [b"2, 3", b"2,,2", b"+2", b"2 2", b"2\x00", b"0x2", b"-1"]:
            events, parser, raised = parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nok"
            )
            self.assertIsInstance(raised, ResponseParseError, value)
            self.assertNotIn("body", [event[0] for event in events.log], value)
        events, parser, raised = parse(
            b"HTTP/1.1 200 OK\r\nContent-Lengtx: 2\r\n\r\nok", eof=True
        )
        self.assertIsNone(raised)
        self.assertEqual(events.coalesced[1:], [("body", b"ok"), ("end", False)])

    def test_noBody(self):
        """
        An answer to HEAD, a 204 and a 304 have no body, whatever their
        headers say.
        """
        for response, method in [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HEAD"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD"),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", b"GET"),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", b"GET"),
        ]:
            events, parser, raised = parse(response, method=method)
            self.assertIsNone(raised)
            self.assertEqual([e[0] for e in events.log], ["head", "end"], response)
            self.assertEqual(events.log[-1], ("end", True))

    def test_notReusable(self):
        """
        HTTP/1.0 and C{Connection: close} end the connection after the
        response.
        """
        for response in [
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nConnection: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ]:
            events, parser, raised = parse(response)
            self.assertEqual(events.log[-1], ("end", False), response)

    def test_bytesAfterResponse(self):
        """
        More bytes after the response in the same feed: the connection is not
        reusable, and the parser keeps them in C{trailing}; bytes fed after
        the end are refused.
        """
        events, parser, raised = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokMORE")
        self.assertEqual(events.log[-1], ("end", False))
        self.assertEqual(parser.trailing, b"MORE")
        self.assertRaises(ResponseParseError, parser.feed, b"x")
        parser.feed(b"")

    def test_interimResponses(self):
        """
        1xx responses before the final one are skipped.
        """
        self.assertParses(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
            [("head", 200, b"OK", [(b"Content-Length", b"1")]), ("body", b"x"), ("end", True)],
        )

    def test_switchingProtocols(self):
        """
        A 101 to an upgrade request is passed on and ends the parser's work:
        what follows its head is the new protocol's, in C{trailing}.
        """
        events, parser, raised = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            upgrade=True,
        )
        self.assertIsNone(raised)
        self.assertEqual(
            events.log, [("head", 101, b"Switching Protocols", [(b"Upgrade", b"websocket")])]
        )
        self.assertIs(parser.state, ParserState.SWITCHED)
        self.assertEqual(parser.trailing, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertFalse(parser.feedEOF())

    def test_unaskedSwitch(self):
        self.assertRefused(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "unexpected 101 Switching Protocols"
        )

    def test_expectAgain(self):
        """
        One parser reads the responses of one connection in turn.
        """
        events = Events()
        parser = ResponseParser(events)
        for method in [b"GET", b"HEAD", b"GET"]:
            parser.expect(method)
            parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            if method != b"HEAD":
                parser.feed(b"ok")
        self.assertEqual([e[0] for e in events.log], ["head", "body", "end", "head", "end", "head", "body", "end"])

    def test_started(self):
        """
        C{started} tells whether any of the response has come, interim
        responses aside: a connection closed before that may have been given
        up by the backend while idle.
        """
        events = Events()
        parser = ResponseParser(events)
        parser.expect(b"GET")
        self.assertFalse(parser.started)
        parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertFalse(parser.started)
        parser.feed(b"H")
        self.assertTrue(parser.started)
        self.assertFalse(parser.feedEOF())
        parser.expect(b"GET")
        self.assertFalse(parser.started)

    def test_stoppedByEvents(self):
        """
        An event may stop the parser: nothing more is passed on from the
        same feed, nor later, and the parser waits for its next response.
        """
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
        )
        events, parser, raised = parse(response, stopAt="head")
        self.assertEqual([e[0] for e in events.log], ["head"])
        events, parser, raised = parse(response, stopAt="body")
        self.assertEqual([e[0] for e in events.log], ["head", "body"])
        self.assertIs(parser.state, ParserState.IDLE)
        self.assertRaises(ResponseParseError, parser.feed, b"x")
        for response in [
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokMORE",
        ]:
            events, parser, raised = parse(response, stopAt="head")
            self.assertIsNone(raised)
            self.assertEqual([e[0] for e in events.log], ["head"], response)

    def test_notExpected(self):
        parser = ResponseParser(Events())
        self.assertRaises(ResponseParseError, parser.feed, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertFalse(parser.feedEOF())


class HostileTests(ParserTestCase):
    """
    Bytes that cannot be a response are refused with a reason.
    """

    def test_statusLine(self):
        for line in [
            b"HTTP/2 200 OK",
            b"HTTP/1.2 200 OK",
            b"http/1.1 200 OK",
            b"HTTP/1.1",
            b"ICY 200 OK",
            b"HTTP/1.1 200 O\x00K",
            b"HTTP/1.1 200 O\rK",
            b"HTTP/1.1 200 O\nK",
        ]:
            self.assertRefused(line + b"\r\nContent-Length: 0\r\n\r\n", "bad status line")

    def test_statusCode(self):
        for code in [b"2000", b"20", b"2x0", b"+20", b"099", b"000", b"", b"\xb2\xb2\xb2"]:
            self.assertRefused(
                b"HTTP/1.1 " + code + b" OK\r\nContent-Length: 0\r\n\r\n", "bad status code"
            )

    def test_headerLines(self):
        for line in [
            b"Bad Name: a",
            b"NoColon",
            b": empty name",
            b" Folded: a",
            b"\tFolded: a",
            b"X: a\x00b",
            b"X: a\rb",
            b"X: a\r",
            b"X: a\nb",
            b"X\x7f: a",
            b"X\xff: a",
        ]:
            self.assertRefused(
                b"HTTP/1.1 200 OK\r\nA: 1\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n",
                "bad header line",
            )
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nFolded: a\r\n  b\r\n\r\n", "bad header line"
        )

    def test_longBlankLines(self):
        """
        Lines of tens of thousands of blanks, around a value, in a name or
        alone, are read or refused in one pass over the head (a pattern
        that backtracked over them would not end).
        """
        blanks = b" \t" * 7000
        events, _, raised = parse(
            b"HTTP/1.1 200 OK\r\nA:" + blanks + b"v" + blanks + b"\r\nB:" + blanks
            + b"\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertIsNone(raised)
        self.assertEqual(events.log[0], ("head", 200, b"OK", [(b"A", b"v"), (b"B", b""), (b"Content-Length", b"0")]))
        for line in [blanks + b"A: v", b"A" + blanks + b": v", blanks, b"A" * 14000 + blanks]:
            _, _, raised = parse(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")
            self.assertIn("bad header line", str(raised))

    def test_contentLength(self):
        for values in [
            [b"2", b"3"],
            [b"2, 3"],
            [b"-1"],
            [b"+2"],
            [b"0x2"],
            [b"2 2"],
            [b"1_0"],
            [b""],
            [b"\xb2"],
        ]:
            head = b"".join(b"Content-Length: " + v + b"\r\n" for v in values)
            events, parser, raised = parse(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nok")
            self.assertIsInstance(raised, ResponseParseError, values)
            self.assertIn("Content-Length", str(raised))
            self.assertEqual(events.log, [])

    def test_chunkSize(self):
        """
        A chunk size is hexadecimal digits and nothing else, which Python's
        C{int} alone does not ensure.
        """
        for size in [b"", b"zz", b"-1", b"+1", b"0x1", b"0X1", b"1_0", b"1 0", b"\xb1"]:
            self.assertRefused(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nx\r\n0\r\n\r\n",
                "bad chunk size",
            )

    def test_chunkNotEnded(self):
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            "chunk data not followed by CRLF",
        )

    def test_chunkLineTooLong(self):
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;"
            + b"e" * MAX_CHUNK_LINE,
            "chunk framing line too long",
        )
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "
            + b"t" * MAX_CHUNK_LINE,
            "chunk framing line too long",
        )

    def test_headTooLarge(self):
        """
        A head beyond the limit is refused, whether it comes whole or in
        pieces, ended or not.
        """
        big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE
        self.assertRefused(big, "response head too large")
        self.assertRefused(big + b"\r\n\r\n", "response head too large")
        self.assertRefused(
            b"HTTP/1.1 100 Continue\r\n\r\n" + big + b"\r\n\r\n", "response head too large"
        )
        events = Events()
        parser = ResponseParser(events, maxHeadSize=40)
        parser.expect(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(events.log[-1], ("end", True))
        parser.expect(b"GET")
        self.assertRaises(
            ResponseParseError, parser.feed, b"HTTP/1.1 200 OK\r\nContent-Length:" + b" " * 8 + b"0\r\n\r\n"
        )

    def test_headInSmallPieces(self):
        """
        A large head fed a byte at a time is found when it ends (its end is
        not searched for from its start again each time).
        """
        head = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000 + b"Content-Length: 0\r\n\r\n"
        events, parser, raised = parse(head, pieces=1)
        self.assertEqual([e[0] for e in events.log], ["head", "end"])
        self.assertEqual(len(events.log[0][3]), 2001)
        events, parser, raised = parse(head[:-1] + b"X" + b"\r\n\r\n", pieces=3)
        self.assertIsInstance(raised, ResponseParseError)


_VALID = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\nbody",
    b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\nraw",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
]


class FuzzTests(SynchronousTestCase):
    """
    Whatever bytes come, in whatever pieces, the parser raises nothing but
    L{ResponseParseError}, and its events keep their order.
    """

    def check(self, data, positions, method, upgrade, eof):
        events = Events()
        parser = ResponseParser(events)
        parser.expect(method, upgrade)
        cuts = sorted({p % (len(data) + 1) for p in positions})
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        try:
            for piece in pieces:
                parser.feed(piece)
            if eof:
                parser.feedEOF()
        except ResponseParseError:
            # Refused mid-response, or bytes after its end.
            self.assertIn(
                parser.state, (ParserState.IDLE, ParserState.DONE, ParserState.SWITCHED)
            )
        kinds = [e[0] for e in events.log]
        if kinds:
            self.assertEqual(kinds[0], "head")
            self.assertNotIn("head", kinds[1:])
            self.assertNotIn("end", kinds[:-1])
        if events.log and events.log[0][1] == 101:
            self.assertEqual(kinds, ["head"])
        return events

    @fuzzSettings(400)
    @given(
        st.binary(max_size=300),
        st.lists(st.integers(min_value=0, max_value=400), max_size=8),
        st.sampled_from([b"GET", b"HEAD"]),
        st.booleans(),
        st.booleans(),
    )
    def test_anyBytes(self, data, positions, method, upgrade, eof):
        self.check(b"HTTP/1.1 " + data, positions, method, upgrade, eof)

    @fuzzSettings(600)
    @given(
        st.sampled_from(_VALID),
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=200),
                st.sampled_from(
                    [b"", b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b";", b"0", b"f", b"-",
                     b"\r\n\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                     b"HTTP/1.1 100 Continue\r\n\r\n", b"\xff"]
                ),
                st.integers(min_value=0, max_value=3),
            ),
            max_size=4,
        ),
        st.lists(st.integers(min_value=0, max_value=200), max_size=6),
        st.sampled_from([b"GET", b"HEAD"]),
        st.booleans(),
        st.booleans(),
    )
    def test_mutatedResponses(self, response, mutations, positions, method, upgrade, eof):
        """
        Valid responses with bytes inserted, replaced or deleted.
        """
        data = response
        for at, insert, delete in mutations:
            at %= len(data) + 1
            data = data[:at] + insert + data[at + delete :]
        self.check(data, positions, method, upgrade, eof)

    @fuzzSettings(200)
    @given(
        st.lists(st.binary(min_size=1, max_size=40), max_size=6),
        st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
        st.booleans(),
    )
    def test_chunkedBodies(self, chunks, positions, length):
        """
        A valid body, chunked or counted, split anywhere, comes out whole.
        """
        body = b"".join(chunks)
        if length:
            data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        else:
            data = (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
                + b"0\r\n\r\n"
            )
        events = self.check(data, positions, b"GET", False, False)
        expected = [("head", 200, b"OK", [(b"Content-Length", b"%d" % len(body))] if length else [])]
        if body:
            expected.append(("body", body))
        expected.append(("end", True))
        self.assertEqual(events.coalesced, expected)
