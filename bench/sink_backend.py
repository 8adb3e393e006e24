"""
Sink backend for the manualb upload benchmark.

A twisted.web server that accepts a request body of any size, keeps only its
byte count (the body is counted as it arrives instead of being spooled to a
temporary file, so a 1 GiB upload costs no disk), and answers that count as
the response body.

Usage::

    python bench/sink_backend.py PORT
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class CountingContent:
    """
    Stands in for C{request.content}: counts the bytes written, stores none.
    """

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> None:
        self.count += len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class CountingRequest(Request):
    """
    A request whose body is counted, not kept.
    """

    def gotLength(self, length):
        self.content = CountingContent()


class Count(Resource):
    """
    Answer every request, at any path, with its body's byte count.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"%d\n" % (request.content.count,)


def main(argv: list[str]) -> None:
    """
    Listen on 127.0.0.1:C{argv[0]}.
    """
    if len(argv) != 1:
        raise SystemExit("usage: sink_backend.py PORT")
    site = Site(Count(), requestFactory=CountingRequest)
    site.log = lambda request: None
    reactor.listenTCP(int(argv[0]), site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
