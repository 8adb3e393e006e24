"""
Tests for L{manualb.urlmap}, stage 4: host and path choose the route.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from manualb.config import (
    EXACT,
    PREFIX,
    PREFIX_NO_REGEX,
    REGEX,
    REGEX_CASELESS,
    RouteConfig,
)
from manualb.urlmap import Route, RouteMatch, URLMap
from manualb import view
from manualb.view import normalizeHost


def route(name, path, match=PREFIX, host=None, strip_prefix=False, rewrite=None, pool=None):
    """
    A L{Route} whose pool is its name unless given.
    """
    config = RouteConfig(
        name=name,
        path=path,
        upstream=name,
        match=match,
        host=host,
        strip_prefix=strip_prefix,
        rewrite=rewrite,
    )
    return Route(config, name if pool is None else pool)


def names(urlMap, paths, host=None):
    """
    The name of the route each path matches (L{None} for no match).
    """
    result = []
    for path in paths:
        found = urlMap.match(host, path)
        result.append(None if found is None else found.route.name)
    return result


class PathPrecedenceTests(SynchronousTestCase):
    """
    Within a host's routes, paths are matched by nginx's C{location} rules.
    """

    def test_longestPrefixWins(self):
        """
        The longest matching prefix wins, whatever the order of the routes; a
        prefix matches as a string, as nginx's prefix locations do.
        """
        routes = [route("root", "/"), route("api", "/api"), route("v2", "/api/v2/")]
        for ordering in [routes, routes[::-1], [routes[1], routes[0], routes[2]]]:
            urlMap = URLMap(ordering)
            self.assertEqual(
                names(urlMap, [b"/api/v2/x", b"/api/v1", b"/apix", b"/api", b"/other", b"/"]),
                ["v2", "api", "api", "api", "root", "root"],
            )

    def test_exactBeatsEverything(self):
        """
        An exact route whose path equals the request path wins over a C{^~}
        prefix and over a regex, but only for that very path; elsewhere the
        other rules apply (a regex beats the longest prefix when that is not
        C{^~}).
        """
        urlMap = URLMap(
            [
                route("regex", r"^/a", REGEX),
                route("noregex", "/a", PREFIX_NO_REGEX),
                route("long", "/a/b/c"),
                route("exact", "/a/b", EXACT),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/a/b", b"/a/b/", b"/a/b/c", b"/a"]),
            ["exact", "noregex", "regex", "noregex"],
        )

    def test_exactOnly(self):
        """
        An exact route matches its path only, not paths it is a prefix of.
        """
        urlMap = URLMap([route("exact", "/", EXACT)])
        self.assertEqual(names(urlMap, [b"/", b"/x", b""]), ["exact", None, None])

    def test_noRegexPrefixBeatsRegex(self):
        """
        When the longest matching prefix is C{^~}, regexes are not tried.
        """
        urlMap = URLMap(
            [
                route("regex", r"\.png$", REGEX),
                route("static", "/static/", PREFIX_NO_REGEX),
                route("root", "/"),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/static/a.png", b"/other/a.png", b"/static/a.css"]),
            ["static", "regex", "static"],
        )

    def test_noRegexOnlyWhenLongest(self):
        """
        A C{^~} prefix stops the regex search only when it is the longest
        matching prefix: a longer plain prefix lets the regexes be tried.
        """
        urlMap = URLMap(
            [
                route("regex", r"\.png$", REGEX),
                route("static", "/static/", PREFIX_NO_REGEX),
                route("images", "/static/images/"),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/static/images/a.png", b"/static/images/a.css"]),
            ["regex", "images"],
        )

    def test_regexBeatsPlainPrefix(self):
        """
        A matching regex wins over the longest plain prefix, however long.
        """
        urlMap = URLMap(
            [
                route("longest", "/app/scripts/"),
                route("php", r"\.php$", REGEX),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/app/scripts/x.php", b"/app/scripts/x.js", b"/x.php"]),
            ["php", "longest", "php"],
        )

    def test_regexSearches(self):
        """
        A regex is searched for anywhere in the path unless anchored.
        """
        urlMap = URLMap([route("anywhere", "admin", REGEX), route("anchored", "^/b", REGEX)])
        self.assertEqual(
            names(urlMap, [b"/x/admin/y", b"/b/c", b"/a/b"]),
            ["anywhere", "anchored", None],
        )

    def test_firstRegexInFileOrder(self):
        """
        Of several matching regexes, the first in the file wins, not the
        longest or most specific.
        """
        first = route("first", r"\.(png|jpg)$", REGEX)
        second = route("second", r"^/img/.*\.png$", REGEX)
        self.assertEqual(names(URLMap([first, second]), [b"/img/a.png"]), ["first"])
        self.assertEqual(names(URLMap([second, first]), [b"/img/a.png"]), ["second"])

    def test_caselessRegex(self):
        """
        C{~*} ignores case; C{~} does not.
        """
        urlMap = URLMap(
            [
                route("sensitive", r"\.gif$", REGEX),
                route("caseless", r"\.(gif|jpg)$", REGEX_CASELESS),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/a.gif", b"/a.GIF", b"/a.Jpg", b"/a.png"]),
            ["sensitive", "caseless", "caseless", None],
        )

    def test_longestPrefixFallback(self):
        """
        When no regex matches, the longest prefix found serves the request.
        """
        urlMap = URLMap(
            [
                route("php", r"\.php$", REGEX),
                route("root", "/"),
                route("docs", "/docs"),
            ]
        )
        self.assertEqual(names(urlMap, [b"/docs/a.html", b"/a.html"]), ["docs", "root"])

    def test_anyBytes(self):
        """
        Paths with bytes that are not UTF-8 can be matched; a non-ASCII
        character of a pattern matches its UTF-8 bytes.
        """
        urlMap = URLMap(
            [
                route("binary", r"^/b/.\xff?$", REGEX),
                route("café", "/café"),
                route("accent", "é$", REGEX),
            ]
        )
        self.assertEqual(
            names(urlMap, [b"/b/\xfe", "/cafés".encode(), b"/caf\xe9", "/x/é".encode()]),
            ["binary", "café", None, "accent"],
        )

    def test_noMatch(self):
        """
        A path that no route covers has no match, and neither has any path
        when there are no routes.
        """
        self.assertIsNone(URLMap([route("api", "/api")]).match(None, b"/"))
        self.assertIsNone(URLMap([route("api", "/api")]).match(None, b"/ap"))
        self.assertIsNone(URLMap([]).match(None, b"/"))
        self.assertIsNone(URLMap([]).match(b"example.com", b"/"))

    def test_duplicatePaths(self):
        """
        Two prefix routes, plain or C{^~}, or two exact routes, with the same
        host and path are refused; with different hosts or different kinds
        they are fine.
        """
        self.assertRaises(ValueError, URLMap, [route("a", "/x"), route("b", "/x", PREFIX_NO_REGEX)])
        self.assertRaises(ValueError, URLMap, [route("a", "/x", EXACT), route("b", "/x", EXACT)])
        urlMap = URLMap(
            [
                route("a", "/x"),
                route("b", "/x", EXACT),
                route("c", "/x", host="example.com"),
                route("d", "/x", REGEX),
                route("e", "/x", REGEX),
            ]
        )
        self.assertEqual(names(urlMap, [b"/x", b"/xy"]), ["b", "d"])


class HostTests(SynchronousTestCase):
    """
    The host picks the group of routes first, as nginx's C{server_name}.
    """

    def setUp(self):
        self.urlMap = URLMap(
            [
                route("any", "/"),
                route("exact", "/", host="www.example.com"),
                route("wild", "/", host="*.example.com"),
                route("wilder", "/", host="*.b.example.com"),
                route("ipv6", "/", host="::1"),
            ]
        )

    def host(self, host, path=b"/"):
        found = self.urlMap.match(host, path)
        return None if found is None else found.route.name

    def test_exact(self):
        """
        A host with routes of its own gets them, over any wildcard.
        """
        self.assertEqual(self.host(b"www.example.com"), "exact")

    def test_wildcard(self):
        """
        C{*.example.com} covers any depth of subdomain but not the name
        itself; the longest matching wildcard wins, whatever the order.
        """
        self.assertEqual(self.host(b"a.example.com"), "wild")
        self.assertEqual(self.host(b"x.a.example.com"), "wild")
        self.assertEqual(self.host(b"x.b.example.com"), "wilder")
        self.assertEqual(self.host(b"y.x.b.example.com"), "wilder")
        self.assertEqual(self.host(b"b.example.com"), "wild")
        self.assertEqual(self.host(b"example.com"), "any")
        self.assertEqual(self.host(b".example.com"), "any")
        self.assertEqual(self.host(b"aexample.com"), "any")
        reordered = URLMap(
            [
                route("wilder", "/", host="*.b.example.com"),
                route("wild", "/", host="*.example.com"),
            ]
        )
        self.assertEqual(names(reordered, [b"/"], host=b"x.b.example.com"), ["wilder"])
        self.assertEqual(names(reordered, [b"/"], host=b"x.c.example.com"), ["wild"])

    def test_any(self):
        """
        An unknown host, no host and an empty host get the routes with no
        host.
        """
        self.assertEqual(self.host(b"other.test"), "any")
        self.assertEqual(self.host(None), "any")
        self.assertEqual(self.host(b""), "any")

    def test_portStripped(self):
        self.assertEqual(self.host(b"www.example.com:8080"), "exact")
        self.assertEqual(self.host(b"a.example.com:443"), "wild")

    def test_case(self):
        """
        Host names are compared without case, in the request and in the
        configuration; a trailing dot does not count.
        """
        self.assertEqual(self.host(b"WWW.Example.COM"), "exact")
        self.assertEqual(self.host(b"A.EXAMPLE.COM:80"), "wild")
        self.assertEqual(self.host(b"www.example.com."), "exact")
        self.assertEqual(self.host(b"www.example.com.:80"), "exact")
        urlMap = URLMap([route("upper", "/", host="WWW.Example.com.")])
        self.assertEqual(names(urlMap, [b"/"], host=b"www.example.com"), ["upper"])

    def test_ipv6Literal(self):
        """
        An IPv6 literal keeps its brackets, loses its port and is compared
        in its compressed form; the route may name it with or without
        brackets.
        """
        self.assertEqual(self.host(b"[::1]"), "ipv6")
        self.assertEqual(self.host(b"[::1]:8080"), "ipv6")
        self.assertEqual(self.host(b"[0:0::0:1]:8080"), "ipv6")
        self.assertEqual(self.host(b"[::2]:8080"), "any")
        urlMap = URLMap([route("bracketed", "/", host="[2001:DB8::1]")])
        self.assertEqual(names(urlMap, [b"/"], host=b"[2001:db8::1]:80"), ["bracketed"])

    def test_noFallThrough(self):
        """
        A host whose group has no route for the path has no match: the
        routes of a wildcard or of any host are not tried, as in nginx.
        """
        urlMap = URLMap(
            [
                route("any", "/"),
                route("api", "/api", host="api.example.com"),
                route("wild", "/wild", host="*.example.com"),
            ]
        )
        self.assertEqual(names(urlMap, [b"/api/x", b"/", b"/wild"], host=b"api.example.com"),
                         ["api", None, None])
        self.assertEqual(names(urlMap, [b"/wild", b"/", b"/api"], host=b"a.example.com"),
                         ["wild", None, None])
        self.assertEqual(names(urlMap, [b"/api", b"/wild"], host=b"other.test"), ["any", "any"])

    def test_noAnyGroup(self):
        """
        Without routes for any host, a host that selects no group, or no
        host, has no match.
        """
        urlMap = URLMap([route("exact", "/", host="www.example.com")])
        self.assertEqual(names(urlMap, [b"/"], host=b"www.example.com"), ["exact"])
        self.assertEqual(names(urlMap, [b"/"], host=b"other.test"), [None])
        self.assertEqual(names(urlMap, [b"/"], host=None), [None])

    def test_groupsSearchedSeparately(self):
        """
        Precedence is worked out within the chosen group only: a regex of
        another host does not beat this host's prefix.
        """
        urlMap = URLMap(
            [
                route("otherRegex", r"\.php$", REGEX, host="other.test"),
                route("prefix", "/", host="www.example.com"),
            ]
        )
        self.assertEqual(names(urlMap, [b"/a.php"], host=b"www.example.com"), ["prefix"])
        self.assertEqual(names(urlMap, [b"/a.php"], host=b"other.test"), ["otherRegex"])

    def test_normalizeHost(self):
        self.assertEqual(normalizeHost(None), None)
        self.assertEqual(normalizeHost(b""), None)
        self.assertEqual(normalizeHost(b":80"), None)
        self.assertEqual(normalizeHost(b"Example.COM.:8080"), b"example.com")
        self.assertEqual(normalizeHost(b"[::1]:8080"), b"[::1]")
        self.assertEqual(normalizeHost(b"[FE80::A]"), b"[fe80::a]")
        self.assertEqual(normalizeHost(b"[junk]:1"), b"[junk]")

    def test_normalizeHostKeepsFew(self):
        """
        Normalised hosts are kept for the next request that names them, but
        a client naming ever new hosts (or long values) cannot make the
        proxy keep more than a bounded few.
        """
        self.patch(view, "_HOSTS", {})
        for n in range(5000):
            self.assertEqual(normalizeHost(b"Host%d.Example:80" % (n,)), b"host%d.example" % (n,))
            self.assertLessEqual(len(view._HOSTS), view._HOSTS_KEPT)
        long = b"a" * 10000
        self.assertEqual(normalizeHost(long), long)
        self.assertNotIn(long, view._HOSTS)
        self.assertEqual(normalizeHost(b"Example.COM.:8080"), b"example.com")
        self.assertEqual(normalizeHost(b"Example.COM.:8080"), b"example.com")

    def test_badRouteHost(self):
        """
        A wildcard must be a leading C{*.}; anything else is refused.
        """
        for host in ["*", "*example.com", "www.*.com", "www.example.*", "example.com:80",
                     "[::1]:80", "[junk]"]:
            self.assertRaises(ValueError, route, "r", "/", host=host)


class BackendPathTests(SynchronousTestCase):
    """
    L{RouteMatch.path} is the path to send on.
    """

    def path(self, routeObject, requestPath, host=None):
        return URLMap([routeObject]).match(host, requestPath).path

    def test_unchanged(self):
        """
        Without strip_prefix or rewrite, the request's path goes on as it is.
        """
        self.assertEqual(self.path(route("r", "/api"), b"/api/users"), b"/api/users")
        self.assertEqual(self.path(route("r", r"\.php$", REGEX), b"/a.php"), b"/a.php")
        self.assertEqual(self.path(route("r", "/a", EXACT), b"/a"), b"/a")

    def test_stripPrefix(self):
        """
        The matched prefix is removed and the result starts with C{/}.
        """
        cases = [
            ("/api", b"/api/users", b"/users"),
            ("/api", b"/api", b"/"),
            ("/api", b"/api/", b"/"),
            ("/api/", b"/api/x", b"/x"),
            ("/api/", b"/api/", b"/"),
            ("/api", b"/apix", b"/x"),
            ("/", b"/a/b", b"/a/b"),
            ("/", b"/", b"/"),
        ]
        for prefix, requestPath, expected in cases:
            for kind in (PREFIX, PREFIX_NO_REGEX):
                stripping = route("r", prefix, kind, strip_prefix=True)
                self.assertEqual(
                    self.path(stripping, requestPath), expected, (prefix, kind, requestPath)
                )

    def test_stripPrefixNeedsPrefixRoute(self):
        for kind in (EXACT, REGEX, REGEX_CASELESS):
            self.assertRaises(ValueError, route, "r", "/a", kind, strip_prefix=True)

    def test_rewriteGroups(self):
        """
        C{$1}..C{$9} in the replacement stand for the regex's groups; only
        the first match is replaced.
        """
        rewriting = route("r", "/old", rewrite=(r"^/old/([^/]+)/(.*)$", "/new/$2/$1"))
        self.assertEqual(self.path(rewriting, b"/old/a/b/c"), b"/new/b/c/a")
        once = route("r", "/", rewrite=("o", "0"))
        self.assertEqual(self.path(once, b"/foo"), b"/f0o")
        nine = route("r", "/", rewrite=("/" + "(.)" * 9, "/$9$8$7$6$5$4$3$2$1"))
        self.assertEqual(self.path(nine, b"/123456789x"), b"/987654321x")

    def test_rewriteLiteral(self):
        """
        Backslashes and a C{$} not followed by a group number are literal in
        the replacement; a group that did not take part is empty.
        """
        rewriting = route("r", "/", rewrite=(r"^/a(x)?", r"/b\n\1$0$x$1"))
        self.assertEqual(self.path(rewriting, b"/a/c"), b"/b\\n\\1$0$x/c")
        self.assertEqual(self.path(rewriting, b"/ax/c"), b"/b\\n\\1$0$xx/c")

    def test_rewriteNoMatch(self):
        """
        A path the rewrite's regex does not match goes on unchanged.
        """
        rewriting = route("r", "/", rewrite=(r"^/old/(.*)", "/new/$1"))
        self.assertEqual(self.path(rewriting, b"/other"), b"/other")

    def test_rewriteRegexRoute(self):
        rewriting = route("r", r"\.php$", REGEX_CASELESS, rewrite=(r"\.php$", ".cgi"))
        self.assertEqual(self.path(rewriting, b"/a/index.PHP"), b"/a/index.PHP")
        rewriting = route("r", r"\.php$", REGEX_CASELESS, rewrite=(r"(?i)\.php$", ".cgi"))
        self.assertEqual(self.path(rewriting, b"/a/index.PHP"), b"/a/index.cgi")

    def test_stripThenRewrite(self):
        """
        With both, the rewrite applies to the path after strip_prefix.
        """
        both = route("r", "/api", strip_prefix=True, rewrite=(r"^/v1/", "/v2/"))
        self.assertEqual(self.path(both, b"/api/v1/users"), b"/v2/users")

    def test_rewriteBadGroup(self):
        """
        A replacement that refers to a group the regex does not have is
        refused when the route is built, and so is a bad regex.
        """
        self.assertRaises(ValueError, route, "r", "/", rewrite=(r"^/(a)", "/$2"))
        self.assertRaises(re.error, route, "r", "/", rewrite=(r"^/(a", "/$1"))
        self.assertRaises(re.error, route, "r", "(", REGEX)


class RouteTests(SynchronousTestCase):
    def test_name(self):
        self.assertEqual(route("api", "/api").name, "api")

    def test_unknownMatch(self):
        self.assertRaises(ValueError, route, "r", "/", "glob")

    def test_equality(self):
        """
        Routes with equal configurations and the same pool are equal; the
        match is a value too.
        """
        pool = object()
        self.assertEqual(route("r", "^/a", REGEX, pool=pool), route("r", "^/a", REGEX, pool=pool))
        self.assertNotEqual(route("r", "/a", pool=pool), route("r", "/a", pool=object()))
        self.assertEqual(
            URLMap([route("r", "/a", pool=pool)]).match(None, b"/a/b"),
            RouteMatch(route("r", "/a", pool=pool), b"/a/b"),
        )


class FromConfigTests(SynchronousTestCase):
    def test_fromConfig(self):
        """
        L{URLMap.fromConfig} builds routes from L{RouteConfig}s, each with
        the pool of its upstream, and keeps their order.
        """
        pools = {"web": object(), "api": object(), "static": object()}
        configs = [
            RouteConfig(name="default", path="/", upstream="web"),
            RouteConfig(name="php", path=r"\.php$", upstream="api", match=REGEX),
            RouteConfig(name="php2", path=r"php", upstream="static", match=REGEX),
            RouteConfig(
                name="api",
                path="/api/",
                upstream="api",
                host="api.example.com",
                strip_prefix=True,
            ),
            RouteConfig(
                name="static",
                path="/static",
                upstream="static",
                match=PREFIX_NO_REGEX,
                rewrite=(r"^/static/v\d+/(.*)", "/static/$1"),
            ),
        ]
        urlMap = URLMap.fromConfig(configs, pools)
        self.assertEqual([r.config for r in urlMap.routes], configs)
        found = urlMap.match(b"api.example.com:443", b"/api/users")
        self.assertIs(found.route.pool, pools["api"])
        self.assertEqual((found.route.name, found.path), ("api", b"/users"))
        found = urlMap.match(b"www.example.com", b"/x.php")
        self.assertIs(found.route.pool, pools["api"])
        self.assertEqual(found.route.name, "php")
        found = urlMap.match(None, b"/static/v3/a.php")
        self.assertIs(found.route.pool, pools["static"])
        self.assertEqual((found.route.name, found.path), ("static", b"/static/a.php"))
        found = urlMap.match(None, b"/index.html")
        self.assertIs(found.route.pool, pools["web"])
        self.assertIsNone(urlMap.match(b"api.example.com", b"/index.html"))

    def test_unknownUpstream(self):
        """
        A route naming an upstream without a pool is a L{KeyError}; the
        configuration is expected to have checked that already.
        """
        configs = [RouteConfig(name="r", path="/", upstream="missing")]
        self.assertRaises(KeyError, URLMap.fromConfig, configs, {})


class NormalizePathTests(SynchronousTestCase):
    """
    Routes match the path as nginx's $uri: decoded and resolved.
    """

    def test_normalized(self):
        from manualb.urlmap import normalizePath

        for raw, expected in [
            (b"/", b"/"),
            (b"/a/b", b"/a/b"),
            (b"/static/../admin", b"/admin"),
            (b"/static/%2e%2e/admin", b"/admin"),
            (b"//a///b/", b"/a/b/"),
            (b"/a/./b/.", b"/a/b/"),
            (b"/a/b/..", b"/a/"),
            (b"/%41", b"/A"),
            (b"http://example.com/x/../y", b"/y"),
            (b"http://example.com", b"/"),
        ]:
            self.assertEqual(normalizePath(raw), expected, raw)

    def test_invalid(self):
        from manualb.urlmap import normalizePath

        for raw in [b"/..", b"/a/../../b", b"*", b"ftp://h/x", b"x"]:
            self.assertIsNone(normalizePath(raw), raw)
