"""
The front ends a listener may serve HTTP/1.1 with: the lean one of
L{manualb.front.http1} (C{front_end = lean}, the default), parsing with
httptools, or twisted.web's own (C{front_end = twisted}, the
L{manualb.web.ProxySite} itself).  Either serves HTTP/2 on Twisted's H2
stack when a TLS client negotiates C{h2}.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from twisted.internet.protocol import Factory

from manualb.front.http1 import HTTP1Connection, LeanFactory
from manualb.web import ProxySite

#: The front ends, by their name in C{front_end}.
FRONT_ENDS = ("lean", "twisted")

#: The front end of a listener that does not choose one.
DEFAULT_FRONT_END = "lean"

# The lean factory of each site, made once: a reload that gives a line the
# same site and front end leaves it as it is.
_lean: WeakKeyDictionary[ProxySite, LeanFactory] = WeakKeyDictionary()


def serving(site: ProxySite, frontEnd: str | None = None) -> Factory:
    """
    The factory that serves the connections of a listener with C{site}
    through the front end named C{frontEnd} (L{DEFAULT_FRONT_END} when
    L{None}): the same one each time for the same site and front end.
    """
    if (frontEnd or DEFAULT_FRONT_END) == "twisted":
        return site
    factory = _lean.get(site)
    if factory is None:
        factory = _lean[site] = LeanFactory(site)
    return factory


def siteOf(factory: Factory) -> Factory:
    """
    The L{ProxySite} whose parts C{factory}, as L{serving} gave it, serves
    (C{factory} itself when it serves no site).
    """
    return factory.site if isinstance(factory, LeanFactory) else factory


__all__ = ["DEFAULT_FRONT_END", "FRONT_ENDS", "HTTP1Connection", "LeanFactory", "serving", "siteOf"]
