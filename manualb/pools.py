"""
The upstream pools a configuration builds (stage 5, selection): each
server whole, with its health and its connection pool, and the health
monitor that probes them; and, across a reload, the servers that stay
carried over with their state.
"""

from __future__ import annotations

import attrs

from manualb.balancers import makeBalancer
from manualb.config import ServerAddress, ServerConfig, UpstreamConfig
from manualb.handoff import ConnectionPool
from manualb.health import HealthLog, HealthMonitor, ServerHealth
from manualb.selection import Pool, Server


def buildPool(
    config: UpstreamConfig,
    reactor,
    previous: Pool | None = None,
    leaving: list[Server] | None = None,
) -> Pool:
    """
    A pool with its strategy, and its servers each whole: its health (which
    records its changes in the pool's health log) and its connection pool;
    and the health monitor that probes them.

    @param previous: The pool of the same name that a reload replaces: its
        health log, and each of its servers that stays (same address, and
        the same TLS settings for an C{https} one), carry over.
    @param leaving: Where the servers of C{previous} that do not stay go.
    """
    healthLog = previous.monitor.log if previous is not None else HealthLog(config.name, reactor)
    kept: dict[ServerAddress, Server] = {}
    if previous is not None:
        if sameConnections(previous.config, config):
            kept = {server.address: server for server in previous.servers}
        else:
            kept = {}
            if leaving is not None:
                leaving.extend(previous.servers)
    single = len(config.servers) == 1
    servers = []
    for server in config.servers:
        made = kept.pop(server.address, None)
        if made is None:
            made = Server(
                server,
                ServerHealth(
                    server,
                    reactor,
                    single=single,
                    probes=config.health_check,
                    onChange=healthLog.recorder(server.address.name),
                ),
                ConnectionPool(reactor, server.address, config),
            )
        else:
            carryOver(made, server, config, single)
        servers.append(made)
    if leaving is not None:
        leaving.extend(kept.values())
    monitor = HealthMonitor(healthLog, reactor, servers, config.health_check)
    balancer = makeBalancer(config.balance, config.balance_argument)
    return Pool(config, balancer, servers, monitor, reactor)


def sameConnections(old: UpstreamConfig, new: UpstreamConfig) -> bool:
    """
    Whether the connections made for C{old} may serve C{new}: the same TLS
    settings towards C{https} servers.
    """
    return (old.tls_verify, old.tls_ca, old.tls_name) == (
        new.tls_verify,
        new.tls_ca,
        new.tls_name,
    )


def carryOver(server: Server, config: ServerConfig, upstream: UpstreamConfig, single: bool):
    """
    Give a server that stays across a reload its new line C{config} and
    its upstream's new settings; what an operator set by the admin API (a
    state, a weight) stays, as it would until a restart.
    """
    changedWeight = server.config.weight != server.configured.weight
    current = config
    if server.adminState is not None:
        current = attrs.evolve(current, down=server.adminState != "up")
    if changedWeight:
        current = attrs.evolve(current, weight=server.config.weight)
    server.configured = config
    server.config = current
    server.health.config = config
    server.health.single = single
    server.health.probes = upstream.health_check
    server.connections.config = upstream
