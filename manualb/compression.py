"""
Compression of responses on the way to the client, as nginx's C{gzip}
does: C{gzip = on} in a route, with C{gzip_types} (C{text/html} always,
plus the types listed, or C{*} for any) and C{gzip_min_length} (20 bytes).

A response is compressed when it is a 200, 403 or 404 (as nginx's), not to
a C{HEAD}, of a type listed and, when its length is given, at least
C{gzip_min_length} long, carries no C{Content-Encoding} already, and the
client accepts gzip.  It streams: each response has its own zlib stream,
and each piece from the backend goes on compressed and flushed at once,
so the proxy holds no more than zlib's own state (about 256 KiB) for it and
the back-pressure of the backend's connection is kept.  Its
C{Content-Length} goes (the client gets it chunked, or until the
connection closes), C{Vary: Accept-Encoding} is added, and a strong
C{ETag} becomes weak.

Compressing a page that reflects what the client sent next to a secret
(a CSRF token) over TLS lets an attacker who can make the client send
requests learn the secret from the compressed length (BREACH): leave
C{gzip} off for such routes, as it is by default.
"""

from __future__ import annotations

import zlib

from manualb.config import GzipConfig, keys
from manualb.syntax import Section, parseValue

__all__ = ["GzipEncoder", "encoderFor", "parseGzipKeys", "acceptsGzip", "GZIP_KEYS"]

#: The keys of C{[route NAME]} read here that are not fields of
#: L{manualb.config.RouteConfig}.
GZIP_KEYS = ("gzip_types", "gzip_min_length")

# nginx's: what gzip compresses.
_CODES = frozenset([200, 403, 404])
_LEVEL = 1
_WBITS = 16 + zlib.MAX_WBITS
_MEMORY = 8


def parseGzipKeys(section: Section) -> dict[str, object]:
    """
    Read C{gzip}, C{gzip_types} and C{gzip_min_length} of a route.

    @return: The C{gzip} field of L{manualb.config.RouteConfig}, when on.
    """
    text = section.single("gzip")
    on = False
    if text is not None:
        try:
            on = bool(parseValue(text, "flag"))
        except ValueError as e:
            raise section.error("gzip", str(e)) from None
    types = ["text/html"]
    typesText = section.single("gzip_types")
    if typesText is not None:
        for word in typesText.split():
            kind = word.lower()
            if kind != "*" and (kind.count("/") != 1 or "" in kind.split("/")):
                raise section.error(
                    "gzip_types", f"{word!r} is not a media type such as text/css, or *"
                )
            if kind not in types:
                types.append(kind)
    length = section.read("gzip_min_length", keys(GzipConfig)["min_length"])
    if not on:
        for key in GZIP_KEYS:
            if section.lines(key) is not None:
                raise section.error(key, "has no use without gzip = on")
        return {}
    assert isinstance(length, int)
    return {"gzip": GzipConfig(tuple(types), length)}


def acceptsGzip(values: list[bytes]) -> bool:
    """
    Whether C{Accept-Encoding} values accept gzip: C{gzip} (or C{x-gzip}, or
    C{*}) with a C{q} above zero.
    """
    found = None
    for value in values:
        for item in value.split(b","):
            coding, _, parameters = item.partition(b";")
            coding = coding.strip().lower()
            if coding not in (b"gzip", b"x-gzip", b"*"):
                continue
            quality = 1.0
            name, _, q = parameters.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    quality = float(q.strip())
                except ValueError:
                    quality = 0.0
            if coding == b"*":
                if found is None:
                    found = quality > 0
            else:
                return quality > 0
    return bool(found)


class GzipEncoder:
    """
    The gzip stream of one response.
    """

    def __init__(self) -> None:
        self._stream = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEMORY)

    def compress(self, data: bytes) -> bytes:
        """
        Compress C{data} and flush it, so that it goes on at once.
        """
        if not data:
            return b""
        stream = self._stream
        return stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """
        The end of the stream.
        """
        return self._stream.flush(zlib.Z_FINISH)


def encoderFor(
    config: GzipConfig,
    method: bytes,
    code: int,
    accepted: list[bytes],
    outgoing: list[tuple[bytes, bytes]],
) -> GzipEncoder | None:
    """
    The encoder of a response when it is to be compressed, its headers
    C{outgoing} changed to say so (in place); else L{None}.

    @param accepted: The request's C{Accept-Encoding} values.
    """
    if method == b"HEAD" or code not in _CODES:
        return None
    kind = None
    for name, value in outgoing:
        lower = name.lower()
        if lower == b"content-encoding":
            return None
        if lower == b"content-type":
            kind = value.partition(b";")[0].strip().lower()
        elif lower == b"content-length":
            try:
                if int(value) < config.min_length:
                    return None
            except ValueError:
                return None
    types = config.types
    if "*" not in types and (kind is None or kind.decode("latin-1") not in types):
        return None
    outgoing.append((b"Vary", b"Accept-Encoding"))
    if not acceptsGzip(accepted):
        return None
    for index in range(len(outgoing) - 1, -1, -1):
        name, value = outgoing[index]
        lower = name.lower()
        if lower == b"content-length":
            del outgoing[index]
        elif lower == b"etag" and value[:1] == b'"':
            outgoing[index] = (name, b"W/" + value)
    outgoing.append((b"Content-Encoding", b"gzip"))
    return GzipEncoder()
