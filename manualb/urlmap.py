"""
Stage 4, the URL map: the request's path decides which upstream pool serves it.

Routes match as nginx's prefix C{location} blocks do: the longest route path
that the request path starts with wins, whatever the order in the file.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs

from manualb.selection import Pool


@attrs.frozen
class Route:
    """
    A path prefix and the pool that serves the requests under it.
    """

    name: str
    path: bytes
    pool: Pool


class URLMap:
    """
    The routes of a listener, searched longest prefix first.
    """

    def __init__(self, routes: Iterable[Route]):
        self.routes = sorted(routes, key=lambda route: len(route.path), reverse=True)

    @classmethod
    def fromConfig(cls, routes, pools: Mapping[str, Pool]) -> "URLMap":
        """
        Build the map from configured routes and the pools built for them.
        """
        return cls(
            Route(route.name, route.path.encode("utf-8"), pools[route.upstream])
            for route in routes
        )

    def match(self, path: bytes) -> Route | None:
        """
        The route for a request path (without its query), or L{None} when no
        route covers it.
        """
        for route in self.routes:
            if path.startswith(route.path):
                return route
        return None
