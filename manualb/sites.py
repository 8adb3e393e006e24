"""
The HTTP sites of a configuration's listeners: the URL map, the stage
chain and the client limits each one serves, built from the configuration
and its pools, and given those of a new configuration in place by a reload,
so that open connections take them from their next request.
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

from manualb.accesslog import AccessLog
from manualb.config import Config, ListenerConfig
from manualb.errorpages import LocalAnswers, SiteAnswers, sharesSite, withSiteAnswers
from manualb.gatekeeper import Gatekeeper, TrustedProxies, frontEndBodyLimit
from manualb.hsts import HostStrictTransport, hostStage, listenerHSTS
from manualb.interfaces import IStage
from manualb.reloading import keepAddedStages
from manualb.rules import SERVER_NAME, SERVER_NAME_ONLY
from manualb.selection import Pool
from manualb.stages import defaultStages, listenerRedirectStages
from manualb.urlmap import URLMap
from manualb.web import ProxyResource, ProxySite
from manualb.web.channel import ConnectionLimit

# The stages a configuration puts in a chain only when it asks for them: a
# reload that drops them must not take them for stages an embedder added.
_OPTIONAL_STAGES = (SiteAnswers, HostStrictTransport)


class Sites:
    """
    The sites of the listeners of a configuration.

    @ivar site: The site of the listeners that serve every route and have
        no pages or HSTS of their own, all of them sharing it.
    @ivar sites: The site of each listener, by listener name (C{site} for
        those that share it).
    @ivar redirects: For each listener with C{redirect_https}, by listener
        name, the site of its plain endpoints, which redirects to https.
    """

    def __init__(
        self,
        config: Config,
        pools: Mapping[str, Pool],
        reactor,
        connections: ConnectionLimit,
        engines: tuple[Callable, Callable],
        first: IStage | None,
        accessLog: AccessLog | None,
        recent,
        metrics,
    ):
        """
        @param pools: The pools by name, a mapping that a reload updates in
            place.
        @param connections: The client connections of every site.
        @param engines: What makes the WAF and the rate limiters that every
            gatekeeper shares (see L{manualb.gatekeeper.gatekeeperEngines}).
        @param first: A stage put first in every chain (the ACME challenges'),
            or L{None}.
        @param accessLog: Where requests are logged, or L{None}.
        @param recent: Where the decision records go, or L{None}.
        @param metrics: What counts requests, or L{None}.
        """
        self.config = config
        self.pools = pools
        self.reactor = reactor
        self.connections = connections
        self.waf, self.rateLimiter = engines
        self.first = first
        self.accessLog = accessLog
        self.recent = recent
        self.metrics = metrics
        self.site = self._proxySite(
            None, listener=",".join(each.name for each in config.listeners if sharesSite(each))
        )
        self.sites = {listener.name: self._siteFor(listener) for listener in config.listeners}
        self.redirects = {
            listener.name: self._proxySite((), self._redirectStages(listener), listener.name)
            for listener in config.listeners
            if listener.redirect_https is not None
        }

    def all(self) -> list[ProxySite]:
        """
        Every site, once each.
        """
        sites = {id(site): site for site in (self.site, *self.sites.values())}
        sites.update((id(site), site) for site in self.redirects.values())
        return list(sites.values())

    def useAccessLog(self, accessLog: AccessLog | None) -> None:
        """
        Log the requests of every site to C{accessLog} from now on.
        """
        self.accessLog = accessLog
        for site in self.all():
            site.resource.accessLog = accessLog

    def useAdmin(self, recent, metrics) -> None:
        """
        Give the decision records of every site's requests to C{recent}, and
        count them in C{metrics}, from now on (either L{None} for none).
        """
        self.recent, self.metrics = recent, metrics
        for site in self.all():
            site.resource.recent = recent
            site.resource.metrics = metrics

    def reload(self, config: Config) -> None:
        """
        Serve C{config}: each listener gets its sites (one that changes
        between sharing the common site and having its own, or between
        redirecting to https and not, a new one), and every site the routes
        and stage chain of C{config}, in place.
        """
        old, self.config = self.config, config
        before = {listener.name: listener for listener in old.listeners}
        names = set()
        for listener in config.listeners:
            names.add(listener.name)
            previous = before.get(listener.name)
            if previous is None or sharesSite(previous) != sharesSite(listener):
                self.sites[listener.name] = self._siteFor(listener)
            if listener.redirect_https is None:
                self.redirects.pop(listener.name, None)
            elif listener.name not in self.redirects:
                self.redirects[listener.name] = self._proxySite((), (), listener.name)
        for name in [name for name in self.sites if name not in names]:
            del self.sites[name]
            self.redirects.pop(name, None)
        self.site.resource.listener = ",".join(
            each.name for each in config.listeners if sharesSite(each)
        )
        self._refresh(self.site, None)
        for listener in config.listeners:
            if not sharesSite(listener):
                routes = None if listener.routes is None else set(listener.routes)
                self._refresh(self.sites[listener.name], routes, listener=listener)
            if listener.name in self.redirects:
                self._refresh(
                    self.redirects[listener.name], (), self._redirectStages(listener), listener
                )

    def _proxySite(self, routeNames, stages=None, listener: str = "") -> ProxySite:
        named = [each for each in self.config.listeners if each.name == listener]
        urlMap, stages, gatekeeper = self._parts(routeNames, stages, *named)
        resource = ProxyResource(
            urlMap, self.reactor, self.accessLog, stages, self.recent, listener, self.metrics
        )
        site = ProxySite(
            resource,
            timeout=self.config.gatekeeper.keepalive_timeout,
            reactor=self.reactor,
            hsts=listenerHSTS(self.config, listener),
            gatekeeper=gatekeeper,
            connections=self.connections,
        )
        site.serverName = self._serverName()
        return site

    def _serverName(self) -> bytes:
        return SERVER_NAME if self.config.server_tokens else SERVER_NAME_ONLY

    def _parts(self, routeNames, stages=None, listener: ListenerConfig | None = None):
        """
        The URL map, the stage chain and the client limits of a site that
        serves the routes named C{routeNames} (all when L{None}) of the
        configuration, with the stage chain C{stages} if given.
        """
        config = self.config
        routes = config.routes
        if routeNames is not None:
            routes = [route for route in routes if route.name in routeNames]
        urlMap = URLMap.fromConfig(routes, self.pools)
        if stages is None:
            stages = defaultStages(urlMap, self._gatekeeper(urlMap))
            stages += filter(None, [hostStage(config, routes)])
        pages = () if listener is None else listener.error_page
        stages = withSiteAnswers(
            list(stages), LocalAnswers.of(config.server_tokens, config.error_page, pages)
        )
        if self.first is not None:
            stages = [self.first, *stages]
        gatekeeper = attrs.evolve(
            config.gatekeeper,
            client_max_body_size=frontEndBodyLimit(config.gatekeeper, routes),
        )
        return urlMap, stages, gatekeeper

    def _gatekeeper(self, urlMap: URLMap | None) -> Gatekeeper:
        """
        The gatekeeper stage of a chain with the routes of C{urlMap} (none
        for a chain that redirects to https); every chain's shares the WAF
        and the rate limiter.
        """
        return Gatekeeper(self.config.gatekeeper, urlMap, self.waf, self.rateLimiter)

    def _siteFor(self, listener: ListenerConfig) -> ProxySite:
        if sharesSite(listener):
            return self.site
        routes = None if listener.routes is None else set(listener.routes)
        return self._proxySite(routes, listener=listener.name)

    def _redirectStages(self, listener: ListenerConfig) -> list:
        return listenerRedirectStages(listener, self.config.routes, self.pools, self._gatekeeper)

    def _refresh(self, site: ProxySite, routeNames, stages=None, listener=None) -> None:
        """
        Give C{site} the routes and stage chain of the configuration now in
        place: its resource's, swapped in place so that open connections
        take them from their next request; stages an embedder added keep
        their place.
        """
        urlMap, stages, gatekeeper = self._parts(routeNames, stages, listener)
        resource = site.resource
        resource.urlMap = urlMap
        current = [stage for stage in resource.stages if not isinstance(stage, _OPTIONAL_STAGES)]
        resource.stages = keepAddedStages(current, list(stages))
        site.gatekeeper = gatekeeper
        site.trustedProxies = (
            TrustedProxies(gatekeeper.trusted_proxies) if gatekeeper.trusted_proxies else None
        )
        site.timeOut = gatekeeper.keepalive_timeout
        site.hsts = listenerHSTS(self.config, resource.listener)
        site.serverName = self._serverName()
