"""
The dashboard of the admin listener (L{manualb.dashboard}), rendered in a
real headless browser (Debian's chromium, installed by C{scripts/browser})
against a load balancer and two backends over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from html.parser import HTMLParser

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.web.client import readBody

from manualb.dashboard import PAGE
from tests.test_admin import AdminTestCase

CHROMIUM = "/usr/bin/chromium"
#: How long one run of the browser may take before it is killed.
BROWSER_TIMEOUT = 90.0


class _Collect(ProcessProtocol):
    """
    Collects a process's output; C{done} fires with C{(status, out, err)}.
    """

    def __init__(self):
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        status = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.done.callback((status, b"".join(self.out), b"".join(self.err)))


class Page(HTMLParser):
    """
    The server rows of a rendered dashboard: for each row (a C{tr} with
    C{data-server}), its attributes and the text of each cell by class.

    @ivar rows: C{{server: {"state": ..., cell class: text}}}.
    @ivar loginShown: Whether the token form is shown.
    """

    def __init__(self, html: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.loginShown = False
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "login":
            self.loginShown = "hidden" not in attrs
        if tag == "tr" and "data-server" in attrs:
            self._row = self.rows[attrs["data-server"]] = {"data-state": attrs["data-state"]}
        elif tag == "td" and self._row is not None:
            self._cell = attrs.get("class", "").split()[-1]
            self._row[self._cell] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def pngPixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """
    The width, height and rows of pixels of an 8-bit RGB or RGBA PNG, each
    row the bytes of its pixels.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    offset, chunks, header = 8, [], None
    while offset < len(data):
        (length, kind) = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert (depth, colour, interlace) in ((8, 2, 0), (8, 6, 0)), header
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * size
    rows, prior = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(size, stride):
                line[i] = (line[i] + line[i - size]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prior))
        elif kind == 3:
            for i in range(stride):
                left = line[i - size] if i >= size else 0
                line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - size] if i >= size else 0
                b, c = prior[i], prior[i - size] if i >= size else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                guess = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + guess) & 0xFF
        rows.append([bytes(line[i : i + 3]) for i in range(0, stride, size)])
        prior = line
    return width, height, rows


class DashboardTests(AdminTestCase):
    """
    C{GET /} on the admin listener, in chromium.
    """

    if not os.access(CHROMIUM, os.X_OK):
        skip = f"{CHROMIUM} is missing: scripts/browser installs it"

    def url(self) -> bytes:
        return b"http://127.0.0.1:%d/" % (self.adminPort,)

    def browser(self, *arguments: str) -> Deferred:
        """
        Run headless chromium with C{arguments} then the dashboard's URL, in
        a fresh profile, for at most L{BROWSER_TIMEOUT} seconds: its
        standard output.
        """
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        protocol = _Collect()
        process = reactor.spawnProcess(
            protocol,
            CHROMIUM,
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--force-color-profile=srgb",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *arguments,
                self.url().decode("ascii"),
            ],
            env={**os.environ, "HOME": profile},
        )
        timeout = reactor.callLater(BROWSER_TIMEOUT, process.signalProcess, "KILL")

        def ended(result):
            if timeout.active():
                timeout.cancel()
            status, out, err = result
            self.assertEqual(status, 0, err.decode("utf-8", "replace")[-2000:])
            return out

        return protocol.done.addCallback(ended)

    @inlineCallbacks
    def render(self) -> Page:
        out = yield self.browser("--dump-dom")
        return Page(out.decode("utf-8"))

    @inlineCallbacks
    def test_servedAlone(self):
        """
        The page is HTML that loads nothing from elsewhere (no absolute URL
        at all), served with a Content-Security-Policy that allows only its
        own inline script and style and requests to its own origin, and
        without MIME sniffing; it is served without the token, which the
        API still requires.
        """
        path = os.path.join(self.directory(), "admin.token")
        with open(path, "wb") as f:
            f.write(b"s3cret\n")
        yield self.serve(extra=f"admin_token_file = {path}")
        response = yield self.agent.request(b"GET", self.url())
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, PAGE)
        headers = response.headers
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        [policy] = headers.getRawHeaders(b"content-security-policy")
        directives = dict(
            part.strip().split(b" ", 1) for part in policy.split(b";") if part.strip()
        )
        self.assertEqual(directives[b"default-src"], b"'self'")
        self.assertEqual(directives[b"script-src"], b"'self' 'unsafe-inline'")
        self.assertEqual(directives[b"style-src"], b"'unsafe-inline'")
        self.assertEqual(re.findall(rb"(?i)(?:https?:|ftp:|wss?:)?//[\w.-]", body), [])
        self.assertEqual(re.findall(rb"(?i)<(?:link|img|iframe|object|embed)\b", body), [])
        self.assertEqual(re.findall(rb"(?i)<script[^>]*\bsrc=", body), [])
        self.assertNotIn(b"innerHTML", body)
        self.assertNotIn(b"@import", body)
        code, error = yield self.api(b"GET", "/api/status")
        self.assertEqual(code, 401)
        response = yield self.agent.request(b"POST", self.url())
        yield readBody(response)
        self.assertEqual(response.code, 405)

    @inlineCallbacks
    def test_live(self):
        """
        Rendered in chromium, the page shows each server of the upstream
        with its state, health, weights and requests, and the share of the
        requests each took, and their rate from the totals of successive
        polls; a server drained through the API shows as draining in the
        next rendering.
        """
        yield self.serve()
        for _ in range(6):
            response, body = yield self.get()
            self.assertEqual(response.code, 200)
        page = yield self.render()
        self.assertFalse(page.loginShown)
        self.assertEqual(set(page.rows), set(self.serverNames))
        for name in self.serverNames:
            row = page.rows[name]
            self.assertEqual(
                (row["data-state"], row["state"], row["health"], row["weight"],
                 row["effective"], row["active"], row["requests"], row["failures"],
                 row["share"]),
                ("up", "up", "up", "1", "1", "0", "3", "0", "50%"),
            )
            # No request while the page polled: the rate its successive
            # totals give.
            self.assertEqual(row["rate"], "0.0/s")
        code, status = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[0], {"state": "drain"}
        )
        self.assertEqual(code, 200)
        for _ in range(2):
            response, body = yield self.get()
        page = yield self.render()
        drained, other = (page.rows[name] for name in self.serverNames)
        self.assertEqual(
            (drained["data-state"], drained["state"], drained["requests"]), ("drain", "drain", "3")
        )
        self.assertEqual((other["data-state"], other["requests"]), ("up", "5"))
        self.assertEqual((drained["share"], other["share"]), ("38%", "63%"))

    @inlineCallbacks
    def test_tokenAsked(self):
        """
        When the API needs a token, the page shows the form that asks for
        it, and no server.
        """
        path = os.path.join(self.directory(), "admin.token")
        with open(path, "wb") as f:
            f.write(b"s3cret\n")
        yield self.serve(extra=f"admin_token_file = {path}")
        page = yield self.render()
        self.assertTrue(page.loginShown)
        self.assertEqual(page.rows, {})

    @inlineCallbacks
    def test_screenshot(self):
        """
        A screenshot of the page at 1200x800 is a PNG of that size that is
        not blank: many colours, among them the green of a server up and
        the blue of its share of the requests.
        """
        yield self.serve()
        for _ in range(4):
            yield self.get()
        path = os.path.abspath(self.mktemp()) + ".png"
        yield self.browser(f"--screenshot={path}", "--window-size=1200,800")
        with open(path, "rb") as f:
            width, height, rows = pngPixels(f.read())
        self.assertEqual((width, height), (1200, 800))
        colours = {pixel for row in rows for pixel in row}
        self.assertGreater(len(colours), 20)
        self.assertIn(bytes((0x2E, 0x7D, 0x32)), colours)
        self.assertIn(bytes((0x19, 0x76, 0xD2)), colours)
