"""
What a route controls besides where its requests go, read from its
C{[route NAME]} section and compiled once per route: its header rules
(L{manualb.headers}), its own answer (C{return}), whether its plain
requests escape the listener's C{redirect_https}, its error pages
(L{manualb.errorpages}) and its compression (L{manualb.compression}).

A route that uses none of them has no controls (L{compileControls} gives
L{None}), and its requests take the path they always took.
"""

from __future__ import annotations

from manualb.compression import GZIP_KEYS, parseGzipKeys
from manualb.config import RouteConfig
from manualb.errorpages import RETURN_KEYS, ReturnAnswer, parseErrorPages, parseReturn
from manualb.headers import HeaderRules, parseHeaderKeys
from manualb.syntax import Section, parseValue

__all__ = ["RouteControls", "compileControls", "parseRouteControls", "CONTROL_KEYS"]

#: The keys of C{[route NAME]} read here that are not fields of
#: L{RouteConfig}.
CONTROL_KEYS: tuple[str, ...] = (*RETURN_KEYS, *GZIP_KEYS)


def parseRouteControls(section: Section, directory: str) -> dict[str, object]:
    """
    Read the keys of a route that this module compiles.

    @param directory: Where relative page files are.

    @return: The fields of L{RouteConfig} given, by name.
    """
    values = parseHeaderKeys(section)
    values.update(parseGzipKeys(section))
    answer = parseReturn(section)
    if answer is not None:
        values["answer"] = answer
        if section.lines("upstream") is not None:
            raise section.error(
                "return",
                "a route that returns its own answer has no upstream; remove one of them",
            )
    redirect = section.single("redirect_https")
    if redirect is not None:
        try:
            values["redirect_https"] = bool(parseValue(redirect, "flag"))
        except ValueError as e:
            raise section.error("redirect_https", str(e)) from None
    pages = parseErrorPages(section, directory)
    if pages:
        values["error_page"] = pages
    return values


class RouteControls:
    """
    The controls of one route, compiled.

    @ivar headers: Its header rules, or L{None}.
    @ivar answer: Its C{return}, or L{None}.
    @ivar pages: Its error pages, by status code.
    @ivar gzip: Its compression (a L{manualb.config.GzipConfig}), or
        L{None}.
    """

    def __init__(self, config: RouteConfig) -> None:
        self.name = config.name
        if config.set_header or config.hide_header or config.pass_header or config.add_header:
            self.headers: HeaderRules | None = HeaderRules(
                config.set_header, config.hide_header, config.pass_header, config.add_header
            )
        else:
            self.headers = None
        self.answer = None if config.answer is None else ReturnAnswer(*config.answer)
        self.pages = dict(config.error_page)
        self.gzip = config.gzip


def compileControls(config: RouteConfig) -> RouteControls | None:
    """
    The controls of route C{config}, or L{None} when it uses none.
    """
    if (
        config.set_header
        or config.hide_header
        or config.pass_header
        or config.add_header
        or config.answer is not None
        or config.error_page
        or config.gzip is not None
    ):
        return RouteControls(config)
    return None
