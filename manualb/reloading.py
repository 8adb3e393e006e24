"""
What a reload changes: the configuration it leaves in place, what of the
new file it cannot apply and what it does, in words, for its log line.
"""

from __future__ import annotations

import attrs

from manualb.config import Config


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


def keepAddedStages(current: list, built: list) -> list:
    """
    The stage chain C{built} for the new configuration, with the stages
    of C{current} (the chain a site runs now) that are of no class
    C{built} has (an embedder added them) each put back before the stage
    of C{built} of the same class as the one it stood before, or at the
    end when it stood last or that class is gone.
    """
    ours = {type(stage) for stage in built}
    chain = list(built)
    waiting: list = []
    for stage in current:
        if type(stage) not in ours:
            waiting.append(stage)
            continue
        if waiting:
            at = next(
                (i for i, each in enumerate(chain) if type(each) is type(stage)), len(chain)
            )
            chain[at:at] = waiting
            waiting = []
    return chain + waiting


def restartNeeded(old: Config, new: Config) -> list[str]:
    """
    What differs between C{old} and C{new} that a reload does not change:
    the shared state, and whether there is an C{[acme]} section (a change
    within it is applied).
    """
    needed = [key for key in ("state", "instance") if getattr(old, key) != getattr(new, key)]
    if (old.acme is None) != (new.acme is None):
        needed.append("acme")
    return needed


def keptAsItWas(old: Config, new: Config) -> Config:
    """
    C{new} with what a reload does not change (see L{restartNeeded}) as it
    is in C{old}: the shared state, and C{[acme]} with the names of
    C{[tls]} it obtains when the section comes or goes.
    """
    kept = attrs.evolve(new, state=old.state, instance=old.instance)
    if (old.acme is None) == (new.acme is None):
        return kept
    names = () if old.tls is None else old.tls.acme
    tls = new.tls
    if tls is None or not (tls.certificates or names):
        tls = old.tls
    else:
        tls = attrs.evolve(tls, acme=names)
    return attrs.evolve(kept, acme=old.acme, tls=tls)


def changes(old: Config, new: Config) -> list[str]:
    """
    What a reload from C{old} to C{new} changes, in words.
    """
    changes = []
    for what, before, after in (
        ("routes", {r.name: r for r in old.routes}, {r.name: r for r in new.routes}),
        ("upstreams", old.upstreams, new.upstreams),
        ("streams", {s.name: s for s in old.streams}, {s.name: s for s in new.streams}),
        (
            "listeners",
            {each.name: each for each in old.listeners},
            {each.name: each for each in new.listeners},
        ),
    ):
        for verb, names in (
            ("added", [name for name in after if name not in before]),
            ("removed", [name for name in before if name not in after]),
            ("changed", [n for n in after if n in before and before[n] != after[n]]),
        ):
            if names:
                changes.append("%s %s: %s" % (what, verb, ", ".join(names)))
    if old.acme is not None and new.acme is not None and old.acme != new.acme:
        added = [name for name in new.acme.hosts if name not in old.acme.hosts]
        gone = [name for name in old.acme.hosts if name not in new.acme.hosts]
        words = [
            "%s %s" % (verb, ", ".join(names))
            for verb, names in (("added", added), ("removed", gone))
            if names
        ]
        if attrs.evolve(old.acme, hosts=new.acme.hosts) != new.acme:
            words.append("settings changed")
        changes.append("acme: " + "; ".join(words))
    if old.gatekeeper != new.gatekeeper:
        changes.append("gatekeeper changed")
    admin = ("admin", "admin_token_file", "explain_records")
    if any(getattr(old, key) != getattr(new, key) for key in admin):
        changes.append("admin API: %s" % (new.admin or "off",))
    if [r.name for r in old.routes] != [r.name for r in new.routes] and not any(
        change.startswith("routes") for change in changes
    ):
        changes.append("routes reordered")
    return changes
