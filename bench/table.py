"""
The report of C{bench/run}: one table of every proxy over every protocol,
with its ratios against nginx and the stock Twisted proxy, then the notes
and the streaming figures.
"""

from __future__ import annotations

from streaming import formatStream

#: The rows ratios are taken against: nginx over the same protocol, and the
#: stock Twisted proxy (plain HTTP only).
NGINX = "nginx"
BASELINE = "twisted.web.proxy"
#: The Python peers, for the ratio against the best of them.
PYTHON_PEERS = ("aiohttp", "proxy.py", "mitmdump", BASELINE)

COLUMNS = [
    ("proxy", "<27"), ("proto", "<6"), ("req/s", ">8"), ("hs/s", ">6"),
    ("p50 ms", ">7"), ("p99 ms", ">7"), ("1MiB MiB/s", ">11"), ("x nginx", ">8"),
    ("x twisted", ">10"), ("resumed 1.2 1.3", ">16"), ("proxy% | CPUs%", ">15"),
    ("RSS MiB", ">8"), ("", "<0"),
]


def _row(cells: list[str]) -> str:
    return "  ".join(f"{cell:{fmt}}" for cell, (_, fmt) in zip(cells, COLUMNS)).rstrip()


def _figure(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def ratio(row: dict, reference: dict | None, key: str = "rps") -> float | None:
    """
    C{row}'s C{key} over C{reference}'s, or L{None} if either lacks it.
    """
    if not reference or not row.get(key) or not reference.get(key):
        return None
    return row[key] / reference[key]


def resumed(row: dict) -> str:
    """
    "reused/tries" for TLS 1.2 and 1.3, or "-".
    """
    r = row.get("resumption")
    if not r:
        return "-"
    return " ".join(f"{r[v]['reused']}/{r[v]['tries']}" for v in ("1.2", "1.3"))


def cpuCell(row: dict, proxyCpu: int | None) -> str:
    """
    The proxy's CPU time over the requests/s run (100% is a whole CPU), then
    how busy each CPU was, the proxy's first: such as C{"99% | 100 61"}.  A
    proxy near 100% is the bottleneck; a CPU near 100% with the proxy well
    below is saturated by the rest (wrk, the backends, or other work of
    the machine).
    """
    usage = row.get("usage")
    if not usage:
        return "-"
    busy = sorted(usage["cpu_busy_pct"].items(), key=lambda item: int(item[0]) != proxyCpu)
    return f"{usage['proxy_cpu_pct']:.0f}% | " + " ".join(f"{b:.0f}" for _, b in busy)


def formatTable(rows: list[dict], proxyCpu: int | None) -> str:
    """
    The table of C{rows}, in the order given.
    """
    byName = {r["row"]: r for r in rows}
    baseline = byName.get(BASELINE)
    lines = [_row([name for name, _ in COLUMNS])]
    for r in rows:
        head = [r["proxy"], r["protocol"]]
        if "error" in r and "rps" not in r:
            lines.append(_row(head + [f"failed: {r['error'].strip().splitlines()[0][:110]}"]))
            continue
        nginx = byName.get(NGINX if r["protocol"] == "http" else f"{NGINX} {r['protocol']}")
        toNginx, toBaseline = ratio(r, nginx), ratio(r, baseline)
        flags = []
        if r.get("errors"):
            flags.append(f"{r['errors']} errors")
        if r.get("failures"):
            flags.append("; ".join(f.strip().splitlines()[0][:60] for f in r["failures"]))
        lines.append(_row(head + [
            _figure(r.get("rps"), ".0f"),
            _figure(r.get("handshakes_per_s"), ".0f"),
            _figure(r.get("p50_ms"), ".2f"),
            _figure(r.get("p99_ms"), ".2f"),
            _figure(r.get("mib_per_s"), ".0f"),
            _figure(toNginx, ".2f"),
            _figure(toBaseline, ".2f"),
            resumed(r),
            cpuCell(r, proxyCpu),
            _figure(r.get("peak_rss_mib"), ".0f"),
            " ".join(flags),
        ]))
    return "\n".join(lines)


def headlines(rows: list[dict]) -> list[str]:
    """
    The ratios the performance targets speak of, where they can be taken.
    """
    byName = {r["row"]: r for r in rows}
    out = []
    m = byName.get("manualb")
    for other in (BASELINE, NGINX):
        x = ratio(m or {}, byName.get(other))
        if x is not None:
            out.append(f"manualb / {other}: {x:.2f}x requests/s")
    peers = [byName[p] for p in PYTHON_PEERS if p in byName and byName[p].get("rps")]
    if m and m.get("rps") and peers:
        best = max(peers, key=lambda r: r["rps"])
        out.append(f"manualb / best Python peer ({best['proxy']}): {m['rps'] / best['rps']:.2f}x")
    x = ratio(m or {}, byName.get(NGINX), "mib_per_s")
    if x is not None:
        out.append(f"manualb / nginx, 1 MiB bodies: {x:.2f}x MiB/s")
    x = ratio(byName.get("manualb everyday") or {}, m)
    if x is not None:
        out.append(f"manualb everyday / manualb: {x:.2f}x requests/s")
    https, h2 = byName.get("manualb https"), byName.get("manualb h2")
    x = ratio(https or {}, byName.get(f"{NGINX} https"))
    if x is not None:
        out.append(f"manualb https / nginx https: {x:.2f}x")
    x = ratio(https or {}, m)
    if x is not None:
        out.append(f"manualb https / manualb http: {x:.2f}x")
    x = ratio(h2 or {}, https)
    if x is not None:
        out.append(f"manualb h2 / manualb https: {x:.2f}x")
    return out


def report(results: dict) -> str:
    """
    The whole plain-text report.
    """
    settings = results["settings"]
    rows = results["rows"]
    out = [formatTable(rows, settings.get("proxy_cpu")), ""]
    out += headlines(rows)
    notes = {}
    for r in rows:
        if r.get("note"):
            notes.setdefault(r["proxy"], r["note"])
    if notes:
        out.append("")
        out += [f"{name}: {note}" for name, note in notes.items()]
    s = results.get("streaming", {})
    if s:
        out.append("")
        out.append(f"streaming {settings['stream_mib']:g} MiB through manualb:")
        for key in ("download", "upload"):
            if key in s:
                out.append("  " + formatStream(f"{key}:", s[key]))
    out.append("")
    out += [
        f"{settings['pinning']}; load average {settings.get('load_average', '?')} at the start; "
        f"whole run {results.get('elapsed_s', 0):.0f}s.",
        f"req/s, p50, p99: wrk -t1 -c{settings['connections']} -d{settings['duration_s']}s after "
        f"{settings['warmup_s']}s of warm-up; h2: h2load -c10 -m10 (latency per stream).",
        f"hs/s: full TLS handshakes/s, h2load --h1 -c{settings['connections']} "
        f"-n{settings['connections']} again and again for {settings['short_s']}s (new clients: no "
        "session to resume; one request per connection).",
        f"1MiB MiB/s: 8 clients fetching a 1 MiB file for {settings['short_s']}s.  resumed: "
        "of 5 openssl s_client connections offering the session of the one before, TLS 1.2 and 1.3.",
        "proxy% | CPUs%: the proxy's CPU time over the req/s run (100 is one CPU), then each "
        "CPU's busy share, the proxy's CPU first.  RSS: peak of the sum over the proxy's processes.",
    ]
    return "\n".join(out)
