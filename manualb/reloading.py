"""
What a reload changes: the configuration it leaves in place, what of the
new file it cannot apply and what it does, in words, for its log line.
"""

from __future__ import annotations

from manualb.config import Config, ListenerConfig


def listenersAfter(old, new) -> tuple[list[ListenerConfig], list[str]]:
    """
    The listeners a reload from C{old} to C{new} leaves: those of C{new},
    but for one that would change between serving every route and some,
    or between redirecting to https and not (its sites cannot change
    kind), which stays as it was; and those kept, in words.
    """
    before = {each.name: each for each in old}
    listeners, kept = [], []
    for listener in new:
        previous = before.get(listener.name)
        if previous is not None and (
            (previous.routes is None) != (listener.routes is None)
            or (previous.redirect_https is None) != (listener.redirect_https is None)
        ):
            kept.append("listener %s" % (listener.name,))
            listener = previous
        listeners.append(listener)
    return listeners, kept


def servedBy(port, connection) -> bool:
    """
    Whether the client connection C{connection} came in through C{port}:
    its local address is the port's (any of the host's when the port
    listens on every interface).
    """
    local, listening = connection.getHost(), port.getHost()
    if local is None:
        return False
    if getattr(listening, "port", None) is None:
        return local == listening
    return (
        type(local) is type(listening)
        and getattr(local, "port", None) == listening.port
        and listening.host in ("0.0.0.0", "::", local.host)
    )


def restartNeeded(old: Config, new: Config) -> list[str]:
    """
    What differs between C{old} and C{new} that a reload does not change.
    """
    needed = []
    for key in ("admin", "admin_token_file", "explain_records", "state", "instance"):
        if getattr(old, key) != getattr(new, key):
            needed.append(key)
    if old.streams != new.streams:
        needed.append("streams")
    return needed


def changes(old: Config, new: Config) -> list[str]:
    """
    What a reload from C{old} to C{new} changes, in words.
    """
    changes = []
    for what, before, after in (
        ("routes", {r.name: r for r in old.routes}, {r.name: r for r in new.routes}),
        ("upstreams", old.upstreams, new.upstreams),
    ):
        for verb, names in (
            ("added", [name for name in after if name not in before]),
            ("removed", [name for name in before if name not in after]),
            ("changed", [n for n in after if n in before and before[n] != after[n]]),
        ):
            if names:
                changes.append("%s %s: %s" % (what, verb, ", ".join(names)))
    if old.gatekeeper != new.gatekeeper:
        changes.append("gatekeeper changed")
    if [r.name for r in old.routes] != [r.name for r in new.routes] and not any(
        change.startswith("routes") for change in changes
    ):
        changes.append("routes reordered")
    return changes
