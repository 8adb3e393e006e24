"""
The routes of proxy.py's reverse proxy in the benchmark: C{/} and C{/1m}
to the two backends named in C{$BENCH_BACKENDS} (C{"HOST:PORT HOST:PORT"}).

proxy.py picks one of a route's upstreams at random for each request (it
has no round robin).  Loaded by C{proxy --plugins proxypy_routes.BenchRoutes}
with C{bench/} on C{PYTHONPATH}.
"""

from __future__ import annotations

import os

from proxy.http.server import ReverseProxyBasePlugin

BACKENDS = os.environ.get("BENCH_BACKENDS", "").split()


class BenchRoutes(ReverseProxyBasePlugin):
    """
    C{/} and C{/1m}, each to the same path of either backend.
    """

    def routes(self):
        return [
            (rf"{path}$", [f"http://{backend}{path}".encode() for backend in BACKENDS])
            for path in ("/1m", "/big", "/")
        ]
