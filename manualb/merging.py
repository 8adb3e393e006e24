"""
The whole of several workers from their parts: their admin API's statuses
merged into one of the same shape (L{mergeStatus}), and their Prometheus
metrics into one exposition (L{mergeMetrics}).

What adds up is summed: requests, failures and attempts in flight of each
server, every counter and histogram sample (bucket by bucket), the gauges
of requests in flight and open connections.  What each worker sees for
itself is taken from the first worker that has it: a server's state, health
and weights (the admin API changes every worker alike; each probes on its
own).  A latency percentile cannot be merged exactly: the merged one is the
largest of the workers', an upper bound.
"""

from __future__ import annotations

import copy
import re
from typing import Iterable, Sequence

__all__ = ["mergeMetrics", "mergeStatus", "LEAST_GAUGES"]

#: Gauges that say whether something holds: the merged value is the least
#: (a server is up when every worker sees it up).
LEAST_GAUGES = ("manualb_server_up",)

_SUMMED = ("active", "requests", "failures")


def _mergeLatency(into: dict, latency: dict) -> None:
    into["samples"] = into.get("samples", 0) + latency.get("samples", 0)
    for name, value in latency.items():
        if name == "samples" or value is None:
            continue
        if into.get(name) is None or value > into[name]:
            into[name] = value


def _mergeServer(into: dict, server: dict) -> None:
    for name in _SUMMED:
        into[name] = into.get(name, 0) + server.get(name, 0)
    _mergeLatency(into.setdefault("latency", {}), server.get("latency", {}))


def mergeStatus(parts: Sequence[tuple[dict, dict | None]], time: float) -> dict:
    """
    One status of the shape of a worker's C{/api/status} for them all.

    @param parts: For each worker, what the supervisor knows of it (its
        number, pid, state...) and its status, or L{None} when it did not
        answer.
    @param time: When, for the status's C{time}.

    @return: The merged upstreams, and under C{workers} each worker's own
        status and what it served in total.
    """
    upstreams: dict = {}
    workers = []
    for worker, status in parts:
        detail = dict(worker)
        workers.append(detail)
        if status is None:
            continue
        detail["status"] = status
        detail["requests"] = 0
        for name, pool in status.get("upstreams", {}).items():
            merged = upstreams.get(name)
            if merged is None:
                merged = upstreams[name] = copy.deepcopy(pool)
                merged["servers"] = []
            byName = {server["server"]: server for server in merged["servers"]}
            for server in pool.get("servers", []):
                detail["requests"] += server.get("requests", 0)
                into = byName.get(server["server"])
                if into is None:
                    into = copy.deepcopy(server)
                    for field in _SUMMED:
                        into[field] = 0
                    into["latency"] = {"samples": 0}
                    merged["servers"].append(into)
                    byName[server["server"]] = into
                _mergeServer(into, server)
    return {"time": time, "upstreams": upstreams, "workers": workers}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")


def _format(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return "%d.0" % (value,)
    return repr(value)


def mergeMetrics(texts: Iterable[str]) -> str:
    """
    One Prometheus text exposition for the expositions C{texts} of every
    worker: samples of the same name and labels summed (so histograms
    bucket by bucket), but for the C{_created} time of a counter (the
    earliest) and the gauges of L{LEAST_GAUGES} (the least).  Each family
    keeps its comments (C{# HELP}, C{# TYPE}) once and its samples
    together, in the order first seen.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    values: dict[str, float] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("#"):
                words = line.split(None, 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    family = words[2]
                comments = families.setdefault(family, ([], []))[0]
                if line not in comments:
                    comments.append(line)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, key = match.group(1), match.group(1) + (match.group(2) or "")
            try:
                number = float(match.group(3))
            except ValueError:
                continue
            if key not in values:
                values[key] = number
                families.setdefault(family, ([], []))[1].append(key)
            elif name.endswith("_created") or name in LEAST_GAUGES:
                values[key] = min(values[key], number)
            else:
                values[key] += number
    out = []
    for comments, keys in families.values():
        out.extend(comments)
        out.extend("%s %s" % (key, _format(values[key])) for key in keys)
    return "\n".join(out) + "\n"
