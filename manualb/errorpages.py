"""
What the proxy answers by itself: its error pages, which say nothing of
its insides (the reason goes to the log, and the page shows the request
id to find it there), the operator's own pages (C{error_page = 502 503
/path/to/page.html}, as nginx's C{error_page}, in C{[manualb]}, a
C{[listener NAME]} or a C{[route NAME]}, the route's first), the
C{Server} header without the version (C{server_tokens = off}), and a
route's own answer (C{return = CODE [TEXT or URL]}, as nginx's C{return}).

Page files are read when the configuration is (at start and at each
reload), at most L{MAX_PAGE} bytes each.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from twisted.web.http import RESPONSES
from zope.interface import implementer

from manualb.config import ListenerConfig
from manualb.interfaces import IStage
from manualb.rules import CONTROL, SERVER_NAME
from manualb.syntax import Section
from manualb.variables import parseKey
from manualb.view import Answer, Passage, RequestView

__all__ = [
    "LocalAnswers",
    "SiteAnswers",
    "parseErrorPages",
    "parseReturn",
    "ReturnAnswer",
    "GATEWAY_DETAILS",
    "MAX_PAGE",
    "RETURN_KEYS",
]

#: The largest page file, in bytes.
MAX_PAGE = 64 * 1024

#: The keys of C{[route NAME]} read here that are not fields of
#: L{manualb.config.RouteConfig}.
RETURN_KEYS = ("return",)

#: What the proxy's own gateway errors tell the client: nothing of why.
GATEWAY_DETAILS = {
    502: b"The server behind this address did not answer properly.",
    503: b"The service is not available now.",
    504: b"The server behind this address did not answer in time.",
}

_REDIRECTS = {
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
}

_SERVER = (b"Server", SERVER_NAME)
_SERVER_WITHOUT_VERSION = (b"Server", b"manualb")


def parseErrorPages(section: Section, directory: str) -> tuple[tuple[int, bytes], ...]:
    """
    Read C{error_page} of a section: lines of codes (400 to 599) and the
    file of their page, read now.

    @param directory: Where a relative file name is.
    """
    lines = section.lines("error_page")
    if lines is None:
        return ()
    if not lines:
        raise section.error("error_page", "empty value (expected CODE... FILE lines)")
    pages: dict[int, bytes] = {}
    for line in lines:
        *codes, name = line.split()
        if not codes:
            raise section.error(
                "error_page", f"{line!r}: expected CODE... FILE, such as 502 503 /srv/50x.html"
            )
        page = _readPage(section, line, os.path.join(directory, name))
        for text in codes:
            if not text.isdigit() or not 400 <= int(text) <= 599:
                raise section.error(
                    "error_page", f"{line!r}: {text!r} is not a status code from 400 to 599"
                )
            if int(text) in pages:
                raise section.error("error_page", f"{line!r}: {text} has a page already")
            pages[int(text)] = page
    return tuple(sorted(pages.items()))


def _readPage(section: Section, line: str, path: str) -> bytes:
    try:
        with open(path, "rb") as pageFile:
            page = pageFile.read(MAX_PAGE + 1)
    except OSError as e:
        raise section.error(
            "error_page", f"{line!r}: cannot read {path}: {e.strerror or e}"
        ) from None
    if len(page) > MAX_PAGE:
        raise section.error("error_page", f"{line!r}: {path} is larger than {MAX_PAGE // 1024} KiB")
    return page


def parseReturn(section: Section) -> tuple[int, str] | None:
    """
    Read C{return = CODE [TEXT or URL]} of a route: a redirect (301, 302,
    303, 307, 308) needs a URL, another code (200 to 599) takes an optional
    text; both may use C{$variables}.
    """
    text = section.single("return")
    if text is None:
        return None
    first, _, rest = text.partition(" ")
    rest = rest.strip()
    if not first.isdigit() or not 200 <= int(first) <= 599:
        raise section.error(
            "return",
            f"{first!r} is not a status code from 200 to 599 (expected CODE [TEXT or URL])",
        )
    code = int(first)
    if code in (204, 304) and rest:
        raise section.error("return", f"a {code} has no body; give no text after it")
    if code in _REDIRECTS and not rest:
        raise section.error(
            "return",
            f"a {code} needs the URL to redirect to, such as return = {code} https://$host$request_uri",
        )
    if rest:
        if CONTROL.search(rest.encode("utf-8")) is not None:
            raise section.error("return", "the text cannot hold control characters")
        try:
            parseKey(rest)
        except ValueError as e:
            raise section.error("return", str(e)) from None
    return code, rest


class ReturnAnswer:
    """
    A route's C{return}, compiled: the answer it gives a request.
    """

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.value = parseKey(text) if text else None

    def answer(self, view: RequestView, route: str | None) -> Answer:
        code = self.code
        value = b"" if self.value is None else self.value(view, route)
        if CONTROL.search(value) is not None:
            return Answer(500, b"Internal Server Error", b"The answer could not be made.")
        if code in _REDIRECTS:
            title = _REDIRECTS[code]
            page = (
                b"<html><head><title>%d %s</title></head><body><h1>%d %s</h1>"
                b"<hr><p>manualb</p></body></html>\n" % (code, title, code, title)
            )
            return Answer(code, title, headers=((b"Location", value),), page=page)
        title = RESPONSES.get(code, b"Unknown")
        if self.value is None:
            return Answer(code, title, b"" if code < 400 else title + b".")
        return Answer(
            code,
            title,
            headers=((b"Content-Type", b"text/plain; charset=utf-8"),),
            page=value,
        )


class LocalAnswers:
    """
    How the proxy answers by itself on a listener: its C{Server} header and
    its pages by status code.
    """

    def __init__(self, serverTokens: bool = True, pages: Iterable[tuple[int, bytes]] = ()):
        self.server = _SERVER if serverTokens else _SERVER_WITHOUT_VERSION
        self.pages = dict(pages)

    @classmethod
    def of(
        cls, serverTokens: bool, *pageSets: Sequence[tuple[int, bytes]]
    ) -> "LocalAnswers | None":
        """
        The answers of a listener: with the pages of each set, a later set's
        before an earlier's; L{None} when all are the defaults.
        """
        if serverTokens and not any(pageSets):
            return None
        pages: dict[int, bytes] = {}
        for pageSet in pageSets:
            pages.update(pageSet)
        return cls(serverTokens, pages.items())


def serverHeader(passage: Passage) -> tuple[bytes, bytes]:
    """
    The C{Server} header of a response to C{passage}'s request.
    """
    local = passage.local
    return _SERVER if local is None else local.server


def pageOf(code: int, passage: Passage) -> bytes | None:
    """
    The operator's page of status C{code} for C{passage}'s request: its
    route's, else its listener's; L{None} for the proxy's own.
    """
    decision = passage.route
    if decision is not None:
        controls = decision.route.controls
        if controls is not None:
            page = controls.pages.get(code)
            if page is not None:
                return page
    local = passage.local
    if local is not None:
        return local.pages.get(code)
    return None


@implementer(IStage)
class SiteAnswers:
    """
    Gives every request of a listener how the proxy answers by itself
    there (L{Passage.local}): it comes first in the chain of a listener
    with pages of its own or C{server_tokens = off}.
    """

    def __init__(self, local: LocalAnswers):
        self.local = local

    def handle(self, passage: Passage) -> Answer | None:
        passage.local = self.local
        return None


def sharesSite(listener: ListenerConfig) -> bool:
    """
    Whether C{listener} is served by the one site that the listeners
    without routes, pages or HSTS of their own share.
    """
    return listener.routes is None and not listener.error_page and listener.hsts is None


def withSiteAnswers(stages: list, local: LocalAnswers | None) -> list:
    """
    The chain C{stages}, with L{SiteAnswers} first when C{local} is given.
    """
    if local is None:
        return stages
    return [SiteAnswers(local), *stages]
