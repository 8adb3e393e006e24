"""
Building the load balancer from a configuration: the pools, the URL maps,
the proxy resources and the sites that serve them, the TCP stream proxies,
and the listening services (stage 1, the entry).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from manualb.accesslog import AccessLog
from manualb.admin import AdminResource, RecentRequests, adminSite, readToken
from manualb.metrics import Metrics, MetricsResource
from manualb.web.channel import ConnectionLimit
from manualb.config import (
    Config,
    ConfigError,
    ListenerConfig,
    RateLimitConfig,
    WAFConfig,
)
from manualb.configfile import loadConfig
from manualb.gatekeeper import Gatekeeper, TrustedProxies, frontEndBodyLimit
from manualb.interfaces import IRateLimiter, IRateLimitStore, IRequestInspector
from manualb.selection import Pool, Server
from manualb.stages import defaultStages, redirectStages
from manualb.streams import StreamProxyFactory
from manualb.termination import (
    DEFAULT_BACKLOG,
    SNIContextFactory,
    contextFactoryFor,
    hstsHeader,
    isSNI,
    isTLS,
    sniEndpoint,
    splitDescription,
    tolerateUnknownALPN,
)
from manualb.ratelimit import MemoryStore, RateLimiter
from manualb.reloading import changes as describeChanges, listenersAfter, restartNeeded, servedBy
from manualb.pools import buildPool
from manualb.state import sharedState
from manualb.urlmap import URLMap
from manualb.waf import WAF
from manualb.web import ProxyResource, ProxySite, listening, sslContextFactory
from manualb.front import serving

log = Logger()

# For each endpoint type that takes a backlog, how many positional arguments
# come before it: a string with more gives its backlog positionally
# (tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG, unix:PATH:MODE:BACKLOG,
# ssl:PORT:KEY:CERT:METHOD:INTERFACE:BACKLOG).
_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "unix": 2, "ssl": 5, "sni": 1}


def withBacklog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    The endpoint string C{description} with C{backlog=BACKLOG} added when it
    is of a type that takes a backlog (C{tcp}, C{tcp6}, C{unix}, C{ssl},
    C{sni}) and gives none, so that every listener queues as many
    connections as nginx's (511) rather than Twisted's default 50.  A string
    that gives C{backlog=N} keeps it; other types are left as they are.
    """
    args, kwargs = splitDescription(description)
    position = _BACKLOG_POSITION.get(args[0].strip().lower())
    if position is None or "backlog" in kwargs or len(args) - 1 > position:
        return description
    trailing = len(description) - len(description.rstrip("\\"))
    if trailing % 2:
        # A lone final backslash would escape the colon added.
        return description
    return "%s:backlog=%d" % (description, backlog)


def serverEndpoint(reactor, description: str) -> IStreamServerEndpoint:
    """
    Twisted's server endpoint for C{description}, with a backlog of
    L{DEFAULT_BACKLOG} unless it gives one (see L{withBacklog}); for
    C{ssl:}, a client offering by ALPN no protocol the factory speaks is
    served without ALPN rather than refused (see L{tolerateUnknownALPN}).
    """
    description = withBacklog(description)
    endpoint = serverFromString(reactor, description)
    if isTLS(description):
        tolerateUnknownALPN(sslContextFactory(endpoint))
    return endpoint


class LoadBalancer:
    """
    Everything one configuration builds, ready to be served.

    Building it touches neither files nor the network: L{start} reads the
    certificates of C{[tls]}, opens the access log and starts the health
    probes; L{stop} lets the requests in flight finish, then closes every
    connection; L{close} closes them all at once.  Each fires once every
    connection is closed.

    @ivar pools: The upstream pools by name.
    @ivar resource: The proxy over every route, a L{ProxyResource} that can
        also be mounted in another L{twisted.web.server.Site}.
    @ivar site: A L{ProxySite} serving C{resource} at the root.
    @ivar sites: The site of each listener, by listener name: its own
        routes.
    @ivar redirects: For each listener with C{redirect_https}, by listener
        name, the site of its plain endpoints, whose chain answers every
        request with a redirect to https (L{redirectStages}).
    @ivar streams: The factory of each C{[stream NAME]}, by name.
    @ivar connections: The client connections of every site, counted
        against C{max_connections}.
    @ivar tls: The certificates of C{[tls]}, once read (see L{load}), or
        L{None}.
    @ivar waf: Makes the web application firewall of a configuration, or
        L{None} (see L{gatekeeperEngines}).
    @ivar rateLimiter: Makes the request rate limiter of a rate, or L{None}
        (see L{gatekeeperEngines}).
    @ivar recent: The decision records of the latest requests, kept when
        there is an admin listener (C{[manualb] admin}); else L{None}.
    @ivar admin: The admin API (its token read by L{load}), when there is
        an admin listener; else L{None}.
    @ivar shared: The state shared with other instances
        (L{manualb.state.SharedState}), when C{[manualb] state} names a
        store or C{stateStore} is given; else L{None}.
    """

    def __init__(
        self,
        config: Config,
        reactor: IReactorCore,
        accessLog: AccessLog | None = None,
        stateStore=None,
    ):
        self.config = config
        self.reactor = reactor
        self.tls: SNIContextFactory | None = None
        # Who waits for close, from its first call on.
        self._closeWaiters: list[Deferred[None]] | None = None
        self._hasClosed = False
        # Who waits for stop, and what ends the wait, while it waits.
        self._stopWaiters: list[Deferred[None]] = []
        self._stopTimer = None
        self._started = False
        # What reloads let go of: the servers draining, and what ends once
        # their old probes and connections are gone.
        self._leaving: list[Server] = []
        self._departures: list[Deferred] = []
        # The service that listening services belong to (see
        # BalancerService), the listening service of each listen line by
        # (listener name, line), and the timers that end the connections of
        # the lines a reload closed.
        self.parent: MultiService | None = None
        self._listening: dict[tuple[str, str], IService] = {}
        self._closingTimers: list = []
        if accessLog is None and config.access_log is not None:
            accessLog = AccessLog(
                clock=reactor.seconds, target=config.access_log, format=config.log_format
            )
        self.accessLog = accessLog
        self.connections = ConnectionLimit(config.gatekeeper.max_connections)
        self.pools = {
            name: buildPool(upstream, reactor) for name, upstream in config.upstreams.items()
        }
        self.shared = sharedState(config.state, config.instance, self.pools, reactor, stateStore)
        self.recent = self.admin = self.metrics = None
        if config.admin is not None:
            self.recent = RecentRequests(config.explain_records)
            self.metrics = Metrics(lambda: self.pools, lambda: self.connections.open)
            self.admin = AdminResource(
                self.pools, self.recent, reactor, metrics=MetricsResource(self.metrics.registry)
            )
            self.admin.reload = self.reloadFile
            self.admin.shared = self.metrics.shared = self.shared
        if self.shared is None:
            self.waf, self.rateLimiter = gatekeeperEngines(config, reactor)
        else:
            self.waf, self.rateLimiter = gatekeeperEngines(config, reactor, self.shared.rates)
        self.site = self._proxySite(
            None,
            listener=",".join(each.name for each in config.listeners if each.routes is None),
        )
        self.resource = self.site.resource
        self.sites = {listener.name: self._siteFor(listener) for listener in config.listeners}
        self.redirects = {
            listener.name: self._proxySite(
                (),
                redirectStages(listener.redirect_https, self._gatekeeper(None)),
                listener.name,
            )
            for listener in config.listeners
            if listener.redirect_https is not None
        }
        self.streams = {
            stream.name: StreamProxyFactory(stream, self.pools[stream.upstream], reactor)
            for stream in config.streams
        }

    def _proxySite(self, routeNames, stages=None, listener: str = "") -> ProxySite:
        urlMap, stages, gatekeeper = self._siteParts(routeNames, stages)
        resource = ProxyResource(
            urlMap, self.reactor, self.accessLog, stages, self.recent, listener, self.metrics
        )
        return ProxySite(
            resource,
            timeout=self.config.gatekeeper.keepalive_timeout,
            reactor=self.reactor,
            hsts=hstsHeader(self.config.tls),
            gatekeeper=gatekeeper,
            connections=self.connections,
        )

    def _siteParts(self, routeNames, stages=None):
        """
        The URL map, the stage chain and the client limits of a site that
        serves the routes named C{routeNames} (all when L{None}) of the
        configuration, with the stage chain C{stages} if given.
        """
        routes = self.config.routes
        if routeNames is not None:
            routes = [route for route in routes if route.name in routeNames]
        urlMap = URLMap.fromConfig(routes, self.pools)
        if stages is None:
            stages = defaultStages(urlMap, self._gatekeeper(urlMap))
        gatekeeper = attrs.evolve(
            self.config.gatekeeper,
            client_max_body_size=frontEndBodyLimit(self.config.gatekeeper, routes),
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
        if listener.routes is None:
            return self.site
        return self._proxySite(set(listener.routes), listener=listener.name)

    def load(self) -> None:
        """
        Read what the configuration names on disk: the certificates of
        C{[tls]}, once, the admin API's token, and the access log, opened
        for appending.  L{start}
        does this; a listening service does it first (see L{makeService}),
        so that a missing file stops start-up before any port is bound.

        @raise ConfigError: A certificate or key cannot be used (a
            L{manualb.termination.TLSFileError}), or the access log cannot
            be opened.
        """
        config = self.config
        if self.tls is None and config.tls is not None:
            self.tls = contextFactoryFor(config.tls, config.source)
        if self.admin is not None and config.admin_token_file is not None:
            self.admin.token = readToken(config.source, config.admin_token_file)
        if self.accessLog is not None:
            try:
                self.accessLog.start()
            except OSError as e:
                raise ConfigError(
                    config.source,
                    "manualb",
                    "access_log",
                    "cannot open %s: %s" % (config.access_log, e.strerror or e),
                )

    def endpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The server endpoint for a C{listen} line: Twisted's own, or manualb's
        C{sni:} with the certificates of C{[tls]} (read now if not yet); with
        a backlog of L{DEFAULT_BACKLOG} unless the line gives one (see
        L{withBacklog}).
        """
        if isSNI(description):
            if self.tls is None and self.config.tls is not None:
                self.tls = contextFactoryFor(self.config.tls, self.config.source)
            return sniEndpoint(self.reactor, withBacklog(description), self.tls)
        return serverEndpoint(self.reactor, description)

    def streamEndpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The server endpoint for a C{listen} line of a C{[stream]} section.
        """
        return serverEndpoint(self.reactor, description)

    def factoryFor(self, listener: ListenerConfig, description: str) -> Factory:
        """
        What serves connections on one endpoint of C{listener}: its proxy,
        or, on a plain endpoint of a listener with C{redirect_https}, its
        site that redirects to the https URL (L{redirects}).
        """
        frontEnd = listener.front_end or self.config.front_end
        if listener.redirect_https is not None and not isTLS(description):
            return serving(self.redirects[listener.name], frontEnd)
        return serving(self.sites[listener.name], frontEnd)

    def listen(self, listener: ListenerConfig, description: str) -> IService:
        """
        The listening service of the line C{description} of C{listener},
        which a reload keeps for as long as the line stays.
        """
        service = listening(
            partial(self.endpoint, description), self.factoryFor(listener, description), description
        )
        self._listening[listener.name, description] = service
        return service

    def start(self) -> None:
        """
        Read the files (L{load}) and start what runs in the background: the
        active health probes.

        @raise ConfigError: See L{load}.
        """
        self.load()
        self._started = True
        for pool in self.pools.values():
            pool.monitor.start()
        if self.shared is not None:
            self.shared.start()

    def reloadFile(self) -> tuple[bool, str]:
        """
        Read the configuration file again and apply it (L{reload}), as
        C{SIGHUP} and the admin API's C{POST /api/reload} do.  A file that
        cannot be read or is wrong changes nothing: one error line names
        the problem, and the old configuration keeps serving.

        @return: Whether it was applied, and the line logged.
        """
        try:
            config = loadConfig(self.config.source, requireListen=bool(self.config.listeners))
            message = self.reload(config)
        except ConfigError as e:
            message = "Reload refused, the old configuration keeps serving: %s" % (e,)
            log.error("{line}", line=message)
            return False, message
        return True, message

    def reload(self, config: Config) -> str:
        """
        Serve C{config} from now on, without dropping anyone: new requests
        take the new routes, pools, weights, strategies, health checks and
        gatekeeper rules (keep-alive clients from their next request, since
        each site's resource gets its new URL map and stage chain in
        place); requests in flight finish where they are.  A server that
        stays in its pool (same address, and for C{https} the same TLS
        settings) is the same L{Server}: its health, slow start, admin
        state and connections carry over.  A server that goes is drained:
        its requests in flight finish, then its connections close.

        Listen lines (and C{[listener]} sections) that are new or changed
        are bound first; then those that are gone stop accepting, and their
        connections close as in a graceful stop (L{stop}), once their
        requests are done, or after C{shutdown_timeout}.  Lines that stay
        are not rebound.

        The access log moves to its new file and format (opened before the
        old one closes), and the C{sni:} listeners serve the certificates of
        a changed C{[tls]} to new connections (read and checked first).

        What needs other new sockets is not changed: the admin listener
        (its token and C{explain_records} too) and the C{[stream]} sections
        keep their old values, as does a listener that would change between
        serving every route and some, or between redirecting to https and
        not; the log line says they need a restart.

        @raise ConfigError: A C{[stream]} kept needs an upstream that
            C{config} no longer has, a new listen line cannot be bound, the
            new access log cannot be opened, or a certificate or key of
            C{[tls]} cannot be used; nothing changed.

        @return: The line logged: what changed.
        """
        old = self.config
        for stream in old.streams:
            if stream.upstream not in config.upstreams:
                raise ConfigError(
                    config.source,
                    "stream " + stream.name,
                    "upstream",
                    "upstream %s is gone; the stream needs it until a restart"
                    % (stream.upstream,),
                )
        listeners, restart = listenersAfter(old.listeners, config.listeners)
        restart += restartNeeded(old, config)
        certificates = None
        if config.tls != old.tls and config.tls is not None:
            # Read and checked before anything changes.
            certificates = contextFactoryFor(config.tls, config.source)
            if self.tls is None:
                # For the first sni: lines, bound below.
                self.tls = certificates
        logChanged = (old.access_log, old.log_format) != (config.access_log, config.log_format)
        if logChanged:
            self._changeAccessLog(config, config.access_log, config.log_format)
        try:
            opened, closing = self._openListeners(config, listeners)
        except ConfigError:
            if logChanged:
                self._changeAccessLog(old, old.access_log, old.log_format)
            raise
        config = attrs.evolve(
            config,
            listen=next((each.listen for each in listeners if each.name == "default"), ()),
            admin=old.admin,
            admin_token_file=old.admin_token_file,
            explain_records=old.explain_records,
            state=old.state,
            instance=old.instance,
            streams=old.streams,
            listeners=listeners,
        )
        changes = describeChanges(old, config)
        if opened:
            changes.append("listening on " + ", ".join(opened))
        if certificates is not None:
            self.tls.update(certificates)
            changes.append("certificates: " + ", ".join(certificates.names))
        if logChanged:
            changes.append("access log: %s, %s" % (config.access_log or "off", config.log_format))
        pools: dict[str, Pool] = {}
        leaving: list[Server] = []
        for name, upstream in config.upstreams.items():
            pools[name] = buildPool(upstream, self.reactor, self.pools.get(name), leaving)
        for name, pool in self.pools.items():
            if name not in pools:
                leaving.extend(pool.servers)
        for pool in self.pools.values():
            self._departed(pool.monitor.stop())
        self.config = config
        self.pools.clear()
        self.pools.update(pools)
        if self.shared is not None:
            self.shared.poolsChanged()
        if self._started:
            for pool in pools.values():
                pool.monitor.start()
        self.connections.limit = config.gatekeeper.max_connections
        for factory in self.streams.values():
            factory.pool = pools[factory.config.upstream]
        self._refreshSite(self.site, None)
        for listener in config.listeners:
            if listener.routes is not None:
                self._refreshSite(self.sites[listener.name], set(listener.routes))
            if listener.name in self.redirects:
                self._refreshSite(
                    self.redirects[listener.name],
                    (),
                    redirectStages(listener.redirect_https, self._gatekeeper(None)),
                )
        for server in leaving:
            self._drainServer(server)
        if closing:
            changes.append("closing " + ", ".join(description for name, description in closing))
        for key in closing:
            self._closeListener(self._listening.pop(key))
        names = {listener.name for listener in listeners}
        for name in list(self.sites):
            if name not in names:
                del self.sites[name]
                self.redirects.pop(name, None)
        if leaving:
            changes.append(
                "%d servers leaving (their requests in flight finish): %s"
                % (len(leaving), ", ".join(server.name for server in leaving))
            )
        message = "Reloaded %s: %s" % (config.source, "; ".join(changes) or "nothing changed")
        if restart:
            message += "; needs a restart to take effect, kept as it was: " + ", ".join(restart)
        log.info("{line}", line=message)
        return message

    def _changeAccessLog(self, config: Config, target: str | None, format: str) -> None:
        """
        Write the access log to C{target} in C{format} from now on, the new
        file opened (when the balancer has started) before the old one is
        closed; every site's resource writes to it, or to none when
        C{target} is L{None}.

        @raise ConfigError: The new file cannot be opened; nothing changed.
        """
        accessLog = self.accessLog
        try:
            if target is None:
                accessLog = None
            elif accessLog is None:
                accessLog = AccessLog(clock=self.reactor.seconds, target=target, format=format)
                if self._started:
                    accessLog.start()
            else:
                accessLog.change(target, format)
        except OSError as e:
            raise ConfigError(
                config.source,
                "manualb",
                "access_log",
                "cannot open %s: %s" % (target, e.strerror or e),
            )
        if accessLog is not self.accessLog:
            if self.accessLog is not None:
                self.accessLog.close()
            self.accessLog = accessLog
            sites = [self.site, *self.sites.values(), *self.redirects.values()]
            for site in sites:
                site.resource.accessLog = accessLog

    def _openListeners(
        self, config: Config, listeners: list[ListenerConfig]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """
        Bind the lines of C{listeners} that are not bound yet, with a site
        for each new listener (given its routes once the reload is in
        place).

        @raise ConfigError: A line cannot be bound: the lines bound so far
            are closed again, and the new sites forgotten.

        @return: The lines bound, and the (listener name, line) of those
            to close.
        """
        wanted = {
            (listener.name, description): listener
            for listener in listeners
            for description in listener.listen
        }
        closing = [key for key in self._listening if key not in wanted]
        if self.parent is None:
            return [], closing
        newSites = []
        for listener in listeners:
            if listener.name in self.sites:
                continue
            newSites.append(listener.name)
            self.sites[listener.name] = (
                self.site if listener.routes is None else self._proxySite((), None, listener.name)
            )
            if listener.redirect_https is not None:
                self.redirects[listener.name] = self._proxySite(
                    (), redirectStages(listener.redirect_https, self._gatekeeper(None)), listener.name
                )
        bound: list[tuple[tuple[str, str], IService]] = []
        for key, listener in wanted.items():
            if key in self._listening:
                continue
            service = listening(
                partial(self.endpoint, key[1]), self.factoryFor(listener, key[1]), key[1]
            )
            try:
                service.setServiceParent(self.parent)
            except Exception as e:
                if service in self.parent:
                    service.disownServiceParent()
                for each, made in bound:
                    made.disownServiceParent()
                for name in newSites:
                    del self.sites[name]
                    self.redirects.pop(name, None)
                raise ConfigError(
                    config.source,
                    "manualb" if key[0] == "default" else "listener " + key[0],
                    "listen",
                    "cannot listen on %s: %s" % (key[1], e),
                )
            bound.append((key, service))
        for key, service in bound:
            self._listening[key] = service
        return [key[1] for key, service in bound], closing

    def _closeListener(self, service: IService) -> None:
        """
        Stop accepting on a listening service that a reload removed, and
        let its connections go as in a graceful stop: each closes once its
        requests are done, and what is left after C{shutdown_timeout} is
        closed then.
        """
        port = getattr(service, "port", None)
        if service.parent is not None:
            stopped = service.disownServiceParent()
            if stopped is not None:
                self._departed(stopped)
        if port is None:
            return
        served = [each for each in self.connections.connections if servedBy(port, each)]
        for connection in served:
            connection.drain()
        if not served:
            return

        def timedOut():
            self._closingTimers.remove(timer)
            for connection in served:
                if connection in self.connections.connections:
                    connection.abortConnection()

        timer = self.reactor.callLater(self.config.shutdown_timeout, timedOut)
        self._closingTimers.append(timer)

    def _refreshSite(self, site: ProxySite, routeNames, stages=None) -> None:
        """
        Give C{site} the routes and stage chain of the configuration now in
        place: its resource's, swapped in place so that open connections
        take them from their next request.
        """
        urlMap, stages, gatekeeper = self._siteParts(routeNames, stages)
        resource = site.resource
        resource.urlMap = urlMap
        resource.stages = list(stages)
        site.gatekeeper = gatekeeper
        site.trustedProxies = (
            TrustedProxies(gatekeeper.trusted_proxies) if gatekeeper.trusted_proxies else None
        )
        site.timeOut = gatekeeper.keepalive_timeout
        site.hsts = hstsHeader(self.config.tls)

    def _departed(self, ended: Deferred) -> None:
        """
        Keep C{ended}, which fires once something a reload let go of is
        gone, until it fires: L{close} waits for it.
        """
        if ended.called:
            return
        self._departures.append(ended)

        def gone(result):
            if ended in self._departures:
                self._departures.remove(ended)
            return result

        ended.addBoth(gone)

    def _drainServer(self, server: Server) -> None:
        """
        Let a server removed by a reload go: no new request reaches it (no
        pool of the new configuration has it); its connections close once
        their exchanges are done.
        """
        self._leaving.append(server)
        drained = server.connections.drain()

        def gone(result):
            if server in self._leaving:
                self._leaving.remove(server)
            log.info("Reload: server {server} drained", server=server.name)
            return result

        drained.addBoth(gone)
        self._departed(drained)

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """
        Stop gracefully, as nginx does on C{SIGQUIT}: idle client
        connections close at once, busy ones right after the response in
        hand (HTTP/2 ones after a GOAWAY, once their open streams are done);
        WebSocket and stream tunnels stay until either side closes them.
        Whatever is still open after C{timeout} seconds is closed then, as
        L{close} does.  The caller stops accepting connections first (the
        service of L{makeService} closes its listening ports before it
        stops the balancer).

        @param timeout: How long to wait, by default the configuration's
            C{shutdown_timeout}.

        @return: Fires once every connection is closed and every probe has
            ended (see L{close}).
        """
        if self._hasClosed:
            return succeed(None)
        if self._closeWaiters is not None:
            return self.close()
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        if self._stopTimer is None:
            self._drain(self.config.shutdown_timeout if timeout is None else timeout)
        return waiter

    def _drain(self, timeout: float) -> None:
        started = self.reactor.seconds()
        requests = self.connections.drain()
        streams = list(self.streams.values())
        tunnels = sum(stream.connections for stream in streams)
        log.info(
            "Stopping: waiting up to {timeout}s (shutdown_timeout) for {requests} "
            "requests in flight on {connections} client connections, and "
            "{tunnels} stream connections",
            timeout=timeout,
            requests=requests,
            connections=self.connections.open,
            tunnels=tunnels,
        )
        self._stopTimer = self.reactor.callLater(timeout, self._stopTimedOut, timeout)

        def drained(ignored):
            if self._stopTimer is None or self._closeWaiters is not None:
                # Timed out, or closed meanwhile.
                return
            self._stopTimer.cancel()
            log.info(
                "Stopped: the {requests} requests in flight and {tunnels} stream "
                "connections ended within {seconds:.3f}s",
                requests=requests,
                tunnels=tunnels,
                seconds=self.reactor.seconds() - started,
            )
            self.close()

        d = gatherResults(
            [self.connections.whenClosed()] + [stream.whenClosed() for stream in streams],
            consumeErrors=True,
        )
        d.addCallback(drained)

    def _stopTimedOut(self, timeout: float) -> None:
        self._stopTimer = None
        if self._closeWaiters is not None:
            return
        log.warn(
            "Stopping: shutdown_timeout ({timeout}s) passed; aborting the {count} "
            "connections still open",
            timeout=timeout,
            count=self.connections.open
            + sum(stream.connections for stream in self.streams.values()),
        )
        self.close()

    def close(self) -> Deferred[None]:
        """
        Stop the probes and close every connection: the clients' (HTTP and
        TCP streams), the probes' and the backends', and cancel the connects
        in flight.  Nothing waits for requests in flight to finish.  Closing
        again waits for the same end.

        @return: Fires once every connection is closed and every probe has
            ended; the access log is closed then.
        """
        if self._hasClosed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._closeWaiters is not None:
            self._closeWaiters.append(waiter)
            return waiter
        self._closeWaiters = [waiter]
        self._close().addBoth(self._closed)
        return waiter

    def _closed(self, outcome: object) -> None:
        self._hasClosed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        waiters += self._stopWaiters
        self._stopWaiters = []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)

    def _close(self) -> Deferred:
        if self._stopTimer is not None and self._stopTimer.active():
            self._stopTimer.cancel()
        for timer in self._closingTimers:
            timer.cancel()
        self._closingTimers = []
        probes = [pool.monitor.stop() for pool in self.pools.values()]
        probes += list(self._departures)
        if self.shared is not None:
            probes.append(self.shared.stop())
        # The clients go first: an exchange whose client is gone lets go of
        # its backend connection rather than trying another server.
        clients = probes + [self.connections.closeAll()]
        clients += [stream.closeAll() for stream in self.streams.values()]

        def closeBackends(ignored):
            return gatherResults(
                [
                    server.connections.closeAll()
                    for pool in self.pools.values()
                    for server in pool.servers
                ]
                + [server.connections.closeAll() for server in list(self._leaving)],
                consumeErrors=True,
            )

        def closeLog(ignored):
            if self.accessLog is not None:
                self.accessLog.close()

        d = gatherResults(clients, consumeErrors=True)
        d.addCallback(closeBackends)
        d.addCallback(closeLog)
        return d


def gatekeeperEngines(
    config: Config, reactor, store: IRateLimitStore | None = None
) -> tuple[
    Callable[[WAFConfig], IRequestInspector | None],
    Callable[[RateLimitConfig, str | None], IRateLimiter | None],
]:
    """
    The engines of the gatekeeper of C{config}, which the gatekeeper of
    every listener shares: what makes the WAF of a configuration
    (C{[gatekeeper]}'s, and each route's that differs), and what makes the
    rate limiter of a rate (C{[gatekeeper]}'s, with the route L{None}, or a
    route's own, with its name).  Each is asked once per configuration or
    route by each gatekeeper, and gives the same object every time: the
    same counters and the same buckets for every listener.

    @param store: Where the buckets are, when not in the process.
    """
    wafs: dict[WAFConfig, WAF] = {}
    if store is None:
        store = MemoryStore()
    limiters: dict[tuple[RateLimitConfig, str | None], RateLimiter] = {}

    def makeWAF(waf: WAFConfig) -> IRequestInspector | None:
        if waf.mode == "off":
            return None
        made = wafs.get(waf)
        if made is None:
            made = wafs[waf] = WAF(waf)
        return made

    def makeLimiter(rate: RateLimitConfig, route: str | None) -> IRateLimiter | None:
        if not rate.rate:
            return None
        made = limiters.get((rate, route))
        if made is None:
            # A route's buckets are its own, apart from the gatekeeper's.
            zone = b"gatekeeper:" if route is None else b"route " + route.encode("utf-8") + b":"
            made = limiters[rate, route] = RateLimiter(rate, store, reactor, zone=zone)
        return made

    return makeWAF, makeLimiter


class _Lifecycle(Service):
    """
    Reads the balancer's files and starts its probes with the application,
    and stops it gracefully (L{LoadBalancer.stop}) when the application
    stops.
    """

    def __init__(self, balancer: LoadBalancer):
        self.balancer = balancer

    def privilegedStartService(self):
        super().privilegedStartService()
        # Before the ports are bound (the listening services come after this
        # one), and with the privileges to read keys and open the log.
        self.balancer.load()

    def startService(self):
        super().startService()
        self.balancer.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.balancer.stop()


class BalancerService(MultiService):
    """
    The service of one L{LoadBalancer}: its lifecycle (files read and probes
    started at start, a graceful stop) and a listening service for each
    endpoint of each listener and stream.  Stopping it closes the listening
    ports first (the lifecycle is its first child, so the last one
    stopped), then waits for the balancer's graceful stop.

    @ivar balancer: The balancer it serves.
    """

    def __init__(self, balancer: LoadBalancer):
        super().__init__()
        self.balancer = balancer
        balancer.parent = self
        _Lifecycle(balancer).setServiceParent(self)


def makeService(
    config: Config, reactor: IReactorCore | None = None, balancer: LoadBalancer | None = None
) -> BalancerService:
    """
    A service that runs the load balancer of C{config}: a listening service
    for each endpoint of each listener and stream.  Building it reads no file
    and binds no port; starting it does (a missing certificate raises
    L{ConfigError} then).

    Add it to your own application (C{service.setServiceParent(parent)}) to
    embed manualb; C{service.balancer} is the L{LoadBalancer} it serves.
    Stopping it closes the listening ports, then stops the balancer
    gracefully (L{LoadBalancer.stop}): the requests in flight finish, within
    C{shutdown_timeout}; the L{Deferred} of C{stopService} fires once every
    connection is closed.

    @param reactor: The reactor to serve with; by default the global one.
    @param balancer: The balancer of C{config} to serve, by default a new
        L{LoadBalancer}.
    """
    if reactor is None:
        from twisted.internet import reactor
    if balancer is None:
        balancer = LoadBalancer(config, reactor)
    parent = BalancerService(balancer)
    for listener in config.listeners:
        for description in listener.listen:
            balancer.listen(listener, description).setServiceParent(parent)
    for stream in config.streams:
        for description in stream.listen:
            makeEndpoint = partial(balancer.streamEndpoint, description)
            factory = balancer.streams[stream.name]
            listening(makeEndpoint, factory, description).setServiceParent(parent)
    if config.admin is not None:
        makeEndpoint = partial(serverEndpoint, reactor, config.admin)
        site = adminSite(balancer.admin, reactor)
        listening(makeEndpoint, site, "admin " + config.admin).setServiceParent(parent)
    return parent
