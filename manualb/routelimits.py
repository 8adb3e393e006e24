"""
A route's own timeouts and tries: C{connect_timeout}, C{read_timeout},
C{send_timeout} and C{tries} in C{[route NAME]} take the place of its
upstream's for the requests of that route, as nginx's C{proxy_*_timeout}
and C{proxy_next_upstream_tries} in a C{location} do.

The upstream is not copied: the route's L{RoutePool} is the upstream's
L{Pool} (the same servers, with their health, their connection pools and
their balancer's state) seen through the upstream's settings with the
route's in place.  A route that sets none of them has the upstream's pool
itself, so that it costs nothing.  (C{client_max_body_size}, which a route
sets too, is the gatekeeper's: L{manualb.gatekeeper}.)
"""

from __future__ import annotations

import attrs

from manualb.config import RouteConfig, UpstreamConfig, keys
from manualb.selection import Attempts, Pool
from manualb.syntax import Section
from manualb.view import RequestView

__all__ = ["LIMITS", "RoutePool", "parseRouteLimits", "poolFor", "routeUpstream"]

#: The keys of C{[route NAME]} that take the place of the upstream's.
LIMITS = ("connect_timeout", "read_timeout", "send_timeout", "tries")


def parseRouteLimits(section: Section) -> dict[str, object]:
    """
    The keys of L{LIMITS} that C{section}, a C{[route NAME]}, gives, read
    as the upstream's are.
    """
    declared = keys(RouteConfig)
    upstream = keys(UpstreamConfig)
    values = {}
    for name in LIMITS:
        if section.single(name) is not None:
            values[name] = section.value(
                name, upstream[name].kind, declared[name].default, upstream[name].minimum
            )
    return values


def routeUpstream(route: RouteConfig, upstream: UpstreamConfig) -> UpstreamConfig | None:
    """
    The settings of C{upstream} with those C{route} gives in their place,
    or L{None} when it gives none.
    """
    changes = {
        name: getattr(route, name) for name in LIMITS if getattr(route, name) is not None
    }
    if not changes:
        return None
    return attrs.evolve(upstream, **changes)


class RoutePool:
    """
    An upstream's pool as one route sees it: everything of the L{Pool}, but
    its L{config}, which has the route's timeouts and tries.

    @ivar pool: The upstream's pool.
    @ivar config: The upstream's settings with the route's in place.
    """

    def __init__(self, pool: Pool, config: UpstreamConfig) -> None:
        self.pool = pool
        self.config = config

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)

    def __repr__(self) -> str:
        return f"<RoutePool of {self.pool.name!r}>"

    def select(self, view: RequestView) -> Attempts:
        """
        The attempts of the request C{view}, within the route's C{tries}.
        """
        return Attempts(self, view, self.pool.clock)  # type: ignore[arg-type]


def poolFor(route: RouteConfig, pool: Pool) -> Pool:
    """
    The pool that serves C{route}: C{pool}, its upstream's, or a
    L{RoutePool} over it when the route has limits of its own.
    """
    if all(getattr(route, name) is None for name in LIMITS):
        return pool
    config = routeUpstream(route, pool.config)
    assert config is not None
    return RoutePool(pool, config)  # type: ignore[return-value]
