"""
The dashboard of the admin listener, C{GET /}: one HTML page with its CSS
and script inline, nothing else loaded, that reads C{/api/status} every
second and shows each upstream and its servers (state, health and its
reason, weights, requests in flight, totals, failures, their request rate
and their share of the upstream's requests) and the recent state changes.

The page holds no data of its own, so it is served without the admin
token; when the API asks for one (401), the page asks the operator once,
keeps it in the browser's C{sessionStorage} and sends it as C{Authorization:
Bearer}.  Whatever comes from the API is put in the page as text
(C{textContent}), never as markup.
"""

from __future__ import annotations

from twisted.web.server import Request

#: What the page may load and run: itself, and its inline script and style.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
    b"style-src 'unsafe-inline'; frame-ancestors 'none'"
)

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>manualb</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330;
       background: #f4f6f9; }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1.2em;
         background: #1d2330; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
header .muted { color: #b8c0cc; }
main, #recent, #login, #error { margin: 1em 1.2em; }
section.pool, #recent { background: #fff; border: 1px solid #d7dce3;
                        border-radius: 6px; padding: .6em 1em; margin-bottom: 1em; }
h2 { font-size: 1.05em; margin: .2em 0 .5em; }
h2 .muted, .muted { color: #6b7483; font-weight: normal; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e6e9ee;
         white-space: nowrap; }
th { font-weight: 600; color: #4a5262; font-size: .9em; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; min-width: 4em; text-align: center; color: #fff;
         border-radius: 3px; padding: 0 .4em; font-weight: 600; }
.state-up { background: #2e7d32; }
.state-drain { background: #ef6c00; }
.state-down { background: #c62828; }
.state-backup { background: #1565c0; }
.state-other { background: #6b7483; }
.reason { color: #6b7483; white-space: normal; }
.share { display: flex; align-items: center; gap: .5em; }
.bar { width: 12em; height: .9em; background: #e6e9ee; border-radius: 2px; }
.fill { height: 100%; background: #1976d2; border-radius: 2px; }
#recent ol { list-style: none; margin: 0; padding: 0; }
#recent li { padding: .15em 0; border-bottom: 1px solid #eef0f3; }
#error { color: #c62828; font-weight: 600; }
#login { background: #fff; border: 1px solid #d7dce3; border-radius: 6px;
         padding: 1em; max-width: 28em; }
</style>
</head>
<body>
<header><h1>manualb</h1><span id="summary"></span>
<span id="updated" class="muted">waiting for the status&hellip;</span></header>
<form id="login" hidden>
<p>The admin API needs its token (<code>admin_token_file</code>).
It is kept in this tab only.</p>
<label>Token <input id="token" type="password" autocomplete="off" required></label>
<button type="submit">Show</button>
<p id="login-error" class="reason"></p>
</form>
<p id="error" hidden></p>
<main id="pools"></main>
<section id="recent"><h2>Recent state changes</h2><ol id="changes"></ol></section>
<script>
"use strict";
const TOKEN = "manualb.adminToken";
const WINDOW = 5;       // seconds of totals the rates are computed over
const CHANGES = 20;     // state changes shown
const STATES = ["up", "drain", "down", "backup"];
let samples = [];       // {time, counts: {"pool server": requests}}, oldest first
let known = new Map();  // "pool server" -> the state last seen
let observed = [];      // state changes seen between two polls

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function authorization() {
  const token = sessionStorage.getItem(TOKEN);
  return token ? {"Authorization": "Bearer " + token} : {};
}

function showError(message) {
  const error = document.getElementById("error");
  error.hidden = message === null;
  error.textContent = message === null ? "" : message;
}

function askToken(refused) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent =
    refused ? "That token was refused." : "";
  document.getElementById("token").focus();
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN, input.value.trim());
  input.value = "";
  document.getElementById("login").hidden = true;
  poll();
});

async function poll() {
  try {
    const response = await fetch("/api/status",
                                 {headers: authorization(), cache: "no-store"});
    if (response.status === 401) {
      askToken(sessionStorage.getItem(TOKEN) !== null);
      return;  // until a token is given
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    showError(null);
  } catch (problem) {
    showError("Cannot read the status: " + problem.message);
  }
  setTimeout(poll, 1000);
}

function rate(key) {
  if (samples.length < 2) return null;
  const first = samples[0], last = samples[samples.length - 1];
  const seconds = last.time - first.time;
  if (!(seconds > 0) || !(key in first.counts) || !(key in last.counts)) return null;
  const count = last.counts[key] - first.counts[key];
  return count >= 0 ? count / seconds : null;
}

function perSecond(value) {
  return value === null ? "\\u2013" : value.toFixed(value < 10 ? 1 : 0) + "/s";
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function milliseconds(seconds) {
  return seconds === null || seconds === undefined
    ? "\\u2013" : (seconds * 1000).toFixed(1) + " ms";
}

function record(status) {
  const counts = {};
  for (const [pool, upstream] of Object.entries(status.upstreams)) {
    let total = 0;
    for (const server of upstream.servers) {
      const key = pool + " " + server.server;
      counts[key] = server.requests;
      total += server.requests;
      const before = known.get(key);
      if (before !== undefined && before !== server.state) {
        observed.push({time: status.time, pool: pool, server: server.server,
                       what: before + " \\u2192 " + server.state,
                       reason: "set by " + (server.setBy === "admin" ? "the admin API" : "the file")});
      }
      known.set(key, server.state);
    }
    counts[pool] = total;
  }
  samples.push({time: status.time, counts: counts});
  while (samples.length > 2 && status.time - samples[1].time >= WINDOW) samples.shift();
  observed = observed.slice(-CHANGES);
}

function cell(text, className) {
  return el("td", className, text);
}

function serverRow(pool, server, total) {
  const row = el("tr");
  row.dataset.server = server.server;
  row.dataset.state = server.state;
  row.appendChild(cell(server.server, "server"));
  const state = el("td", "state");
  const kind = STATES.includes(server.state) ? server.state : "other";
  const badge = el("span", "badge state-" + kind, server.state);
  badge.title = "set by " + server.setBy;
  state.appendChild(badge);
  row.appendChild(state);
  const health = el("td", "health");
  health.appendChild(el("span", "phase", server.health.phase));
  if (server.health.reason) {
    health.appendChild(document.createTextNode(" "));
    health.appendChild(el("span", "reason", server.health.reason));
  }
  row.appendChild(health);
  const weight = server.weight;
  row.appendChild(cell(weight.current, "number weight"));
  row.appendChild(cell(Number(weight.effective).toFixed(2).replace(/\\.?0+$/, ""),
                       "number effective"));
  row.appendChild(cell(server.active, "number active"));
  row.appendChild(cell(server.requests, "number requests"));
  row.appendChild(cell(server.failures, "number failures"));
  row.appendChild(cell(perSecond(rate(pool + " " + server.server)), "number rate"));
  row.appendChild(cell(milliseconds(server.latency.p50) + " / " +
                       milliseconds(server.latency.p99), "number latency"));
  const share = total > 0 ? 100 * server.requests / total : 0;
  const shareCell = el("td", "share");
  const bar = el("div", "bar");
  const fill = el("div", "fill");
  fill.style.width = share.toFixed(1) + "%";
  bar.appendChild(fill);
  shareCell.appendChild(bar);
  shareCell.appendChild(el("span", "percent", share.toFixed(0) + "%"));
  row.appendChild(shareCell);
  return row;
}

const COLUMNS = [["Server", ""], ["State", ""], ["Health", ""], ["Weight", "number"],
                 ["Effective", "number"], ["In flight", "number"],
                 ["Requests", "number"], ["Failures", "number"], ["Rate", "number"],
                 ["Latency p50 / p99", "number"], ["Share of requests", ""]];

function poolSection(pool, upstream) {
  const section = el("section", "pool");
  section.dataset.pool = pool;
  const title = el("h2", null, pool + " ");
  const total = upstream.servers.reduce((sum, server) => sum + server.requests, 0);
  title.appendChild(el("span", "muted", upstream.strategy + " \\u00b7 " + total +
                       " requests \\u00b7 " + perSecond(rate(pool))));
  section.appendChild(title);
  const table = el("table");
  const head = el("tr");
  for (const [name, className] of COLUMNS) head.appendChild(el("th", className, name));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  for (const server of upstream.servers) body.appendChild(serverRow(pool, server, total));
  section.appendChild(table);
  return section;
}

function changes(status) {
  const all = observed.slice();
  for (const [pool, upstream] of Object.entries(status.upstreams)) {
    for (const server of upstream.servers) {
      for (const event of server.health.history) {
        all.push({time: event.time, pool: pool, server: server.server,
                  what: (event.source === "admin" ? "set to " : "health ") + event.state,
                  reason: event.reason});
      }
    }
  }
  all.sort((a, b) => b.time - a.time);
  const list = document.getElementById("changes");
  list.replaceChildren(...all.slice(0, CHANGES).map((change) => {
    const item = el("li", "change", clock(change.time) + " " + change.pool + " " +
                    change.server + ": " + change.what);
    if (change.reason) {
      item.appendChild(document.createTextNode(" "));
      item.appendChild(el("span", "reason", "(" + change.reason + ")"));
    }
    return item;
  }));
  if (all.length === 0) list.appendChild(el("li", "muted", "None since the start."));
}

function render(status) {
  record(status);
  const names = Object.keys(status.upstreams).sort();
  document.getElementById("pools").replaceChildren(
    ...names.map((name) => poolSection(name, status.upstreams[name])));
  let servers = 0, up = 0, total = 0;
  for (const name of names) {
    total += rate(name) || 0;
    for (const server of status.upstreams[name].servers) {
      servers += 1;
      up += server.state === "up" ? 1 : 0;
    }
  }
  document.getElementById("summary").textContent =
    names.length + " upstreams \\u00b7 " + up + " of " + servers + " servers up \\u00b7 " +
    perSecond(samples.length < 2 ? null : total);
  document.getElementById("updated").textContent = "updated " + clock(status.time);
  changes(status);
}

poll();
</script>
</body>
</html>
""".encode("utf-8")


def renderDashboard(request: Request) -> bytes:
    """
    The dashboard page, with headers that keep it to itself: a
    C{Content-Security-Policy} allowing only its own inline script and
    style and requests to its own origin, no MIME sniffing, no framing.
    """
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-store")
    return PAGE
