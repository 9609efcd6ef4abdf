"""The report page: one HTML file with its CSS, its small script and its SVGs inline.

Nothing is fetched: no CDN, no web font, no image file. A Content-Security-Policy in the page
itself forbids every fetch and allows only the page's own script (by its hash), so the page
stays self-contained when opened from a USB stick on an air-gapped laptop, and text that came
off the wire (device names, identity strings) can never run as code: Jinja2 escapes every
value, and the SVGs are built with ElementTree, which escapes too.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import Counter
from typing import Any

from edge_agent import __version__
from edge_agent.detect.rules import RANK
from edge_agent.report.charts import Chart
from edge_agent.report.netmap import FAMILY_LABELS, TIER_COLORS, TIER_LABELS, SiteMap
from edge_agent.report.plant import FindingRow, Node, Plant, firmware_status, vulnerabilities
from edge_agent.report.techniques import technique_name
from edge_agent.summary.chain import MEANING

MAX_MESSAGE_CHARS = 2400      # one message's JSON shown with a finding
MAX_PROBLEMS_SHOWN = 50       # verification problems listed per stream

SCRIPT = """\
(function () {
  function filter(input) {
    var target = document.getElementById(input.dataset.filter);
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0, items = target.querySelectorAll('[data-row]');
    items.forEach(function (el) {
      var text = el.textContent.toLowerCase();
      var ok = terms.every(function (t) { return text.indexOf(t) >= 0; });
      el.hidden = !ok; shown += ok;
    });
    var count = document.getElementById(input.dataset.filter + '-count');
    if (count) count.textContent = shown + ' of ' + items.length;
  }
  document.querySelectorAll('input[data-filter]').forEach(function (input) {
    input.addEventListener('input', function () { filter(input); });
  });
  document.querySelectorAll('table.sortable th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0], dir = th.dataset.dir === 'asc' ? -1 : 1;
      th.closest('tr').querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir > 0 ? 'asc' : 'desc';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[th.cellIndex], y = b.cells[th.cellIndex];
        x = x.dataset.sort || x.textContent; y = y.dataset.sort || y.textContent;
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.querySelectorAll('svg.netmap').forEach(function (svg) {
    function q(sel) { return Array.prototype.slice.call(svg.querySelectorAll(sel)); }
    function ends(el) {
      return [el.dataset.src, el.dataset.dst].concat((el.dataset.dsts || '').split(' '))
        .filter(Boolean);
    }
    function withNodes(els) {
      var seen = {};
      els.slice().forEach(function (el) {
        ends(el).concat(el.dataset.ip ? [el.dataset.ip] : []).forEach(function (ip) {
          if (seen[ip]) return;
          seen[ip] = 1;
          els = els.concat(q('.node[data-ip="' + CSS.escape(ip) + '"]'));
        });
      });
      return els;
    }
    function light(els, on) {
      svg.classList.toggle('focus', on);
      els.forEach(function (el) { el.classList.toggle('hl', on); });
    }
    q('.node').forEach(function (node) {
      var ip = CSS.escape(node.dataset.ip), els = null;
      function around() {
        return els || (els = withNodes([node].concat(q('[data-src="' + ip + '"],[data-dst="' +
          ip + '"],[data-dsts~="' + ip + '"]'))));
      }
      node.addEventListener('mouseenter', function () { light(around(), true); });
      node.addEventListener('mouseleave', function () { light(around(), false); });
      node.addEventListener('click', function () {
        var box = document.querySelector('input[data-filter="inventory-rows"]');
        box.value = node.dataset.ip; box.dispatchEvent(new Event('input'));
        document.getElementById('inventory').scrollIntoView();
      });
    });
    q('.edge[data-arrow]').forEach(function (edge) {
      var els = withNodes(q('[data-arrow="' + edge.dataset.arrow + '"]'));
      edge.addEventListener('mouseenter', function () { light(els, true); });
      edge.addEventListener('mouseleave', function () { light(els, false); });
    });
  });
})();
"""

CSS = """\
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --bg:#f4f6f8; --card:#fff;
  --low:#74a9cf; --medium:#f0b400; --high:#e8590c; --critical:#c92a2a; --ok:#2f9e44; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,
  sans-serif; color:var(--ink); background:var(--bg); }
header.top { background:#1d2b36; color:#fff; padding:18px 28px 14px; }
header.top h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header.top .meta { color:#c5d0d9; font-size:13px; }
nav { position:sticky; top:0; z-index:5; background:#263845; padding:0 28px;
  display:flex; gap:2px; flex-wrap:wrap; }
nav a { color:#dbe4ea; text-decoration:none; padding:8px 12px; font-size:13px; }
nav a:hover { background:#34495a; color:#fff; }
main { padding:18px 28px 40px; max-width:1500px; margin:auto; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:16px 20px; margin:0 0 18px; }
section > h2 { margin:0 0 10px; font-size:17px; font-weight:600; }
h3 { font-size:14px; margin:14px 0 6px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px;
  margin:0 0 18px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:10px 14px; }
.card .n { font-size:24px; font-weight:600; }
.card .l { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.bad { border-left:4px solid var(--critical); }
.card.good { border-left:4px solid var(--ok); }
.card.warn { border-left:4px solid var(--medium); }
.note { color:var(--muted); font-size:12.5px; margin:4px 0; }
.sev { display:inline-block; border-radius:10px; padding:0 8px; font-size:11.5px;
  font-weight:600; color:#fff; text-transform:uppercase; letter-spacing:.03em; }
.sev.low { background:var(--low); } .sev.medium { background:var(--medium); color:#222; }
.sev.high { background:var(--high); } .sev.critical { background:var(--critical); }
.tag { display:inline-block; border:1px solid var(--line); border-radius:4px; padding:0 5px;
  font-size:11.5px; margin:1px 2px 1px 0; background:#f8f9fa; white-space:nowrap; }
.tag.new { background:#d0ebff; border-color:#74c0fc; }
.tag.vuln { background:#ffe3e3; border-color:#ff8787; color:#a51111; }
.tag.writer { background:#fff0e6; border-color:#ffa94d; }
.tag.programmer { background:#ffe3e3; border-color:#e03131; }
.mapwrap { overflow:auto; border:1px solid var(--line); border-radius:6px; background:#fbfcfd; }
svg.netmap { display:block; max-width:100%; height:auto; font-family:inherit; margin:0 auto; }
svg.netmap .band { fill:#f1f3f5; }
svg.netmap .band-engineering { fill:#f3f0ff; } svg.netmap .band-client { fill:#e7f5ff; }
svg.netmap .band-controller { fill:#ebfbee; }
svg.netmap .band-label { font-size:13px; font-weight:600; fill:#343a40; }
svg.netmap .band-count { font-size:11.5px; fill:#6c757d; }
svg.netmap .subnet { fill:none; stroke:#adb5bd; stroke-dasharray:3 3; }
svg.netmap .subnet-label { font-size:10.5px; fill:#868e96; }
svg.netmap .edge .line { fill:none; stroke:#5c7cfa; opacity:.75; }
svg.netmap .edge .hit { fill:none; stroke:transparent; stroke-width:10; }
svg.netmap .edge.read .line { stroke:#4c6ef5; }
svg.netmap .edge.write .line { stroke:#f76707; }
svg.netmap .edge.control .line { stroke:#e03131; stroke-dasharray:7 3; }
svg.netmap .edge.other .line { stroke:#adb5bd; stroke-dasharray:2 3; }
svg.netmap .arrowhead.read { fill:#4c6ef5; } svg.netmap .arrowhead.write { fill:#f76707; }
svg.netmap .arrowhead.control { fill:#e03131; } svg.netmap .arrowhead.other { fill:#adb5bd; }
svg.netmap .edge-label { font-size:10.5px; text-anchor:middle; fill:#343a40;
  paint-order:stroke; stroke:#fbfcfd; stroke-width:3.5px; stroke-linejoin:round; }
svg.netmap .edge-label .proto { font-weight:600; }
svg.netmap .edge-label.write .proto { fill:#d9480f; }
svg.netmap .edge-label.control .proto { fill:#c92a2a; }
svg.netmap .edge-label .control { fill:#c92a2a; font-weight:600; }
svg.netmap .node { cursor:pointer; }
svg.netmap .node .shape { stroke:#fff; stroke-width:2; }
svg.netmap .node.uninventoried .shape { stroke:#495057; stroke-dasharray:3 2; fill-opacity:.45; }
svg.netmap .ring { fill:none; stroke-width:3.5; }
svg.netmap .ring.writer { stroke:#f76707; } svg.netmap .ring.programmer { stroke:#e03131; }
svg.netmap .node-label { font-size:11.5px; font-weight:600; text-anchor:middle; fill:#212529;
  paint-order:stroke; stroke:#fbfcfd; stroke-width:3px; }
svg.netmap .node-sub { font-size:10.5px; text-anchor:middle; fill:#6c757d;
  paint-order:stroke; stroke:#fbfcfd; stroke-width:3px; }
svg.netmap .badge-new rect { fill:#1c7ed6; } svg.netmap .badge-new text { fill:#fff;
  font-size:9px; font-weight:700; text-anchor:middle; }
svg.netmap .badge-vuln path { fill:#e03131; stroke:#fff; stroke-width:1; }
svg.netmap .badge-vuln text { fill:#fff; font-size:10px; font-weight:700; text-anchor:middle; }
svg.netmap.focus .edge, svg.netmap.focus .edge-label, svg.netmap.focus .node { opacity:.15; }
svg.netmap.focus .hl { opacity:1 !important; }
svg.netmap .node:focus { outline:none; }
.legend { display:flex; flex-wrap:wrap; gap:6px 18px; margin:10px 0 2px; font-size:12.5px;
  align-items:center; }
.legend span { display:inline-flex; align-items:center; gap:6px; }
.legend svg { flex:none; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { background:#f1f3f5; font-weight:600; white-space:nowrap; }
.tablewrap { max-height:78vh; overflow:auto; border:1px solid var(--line); border-radius:6px; }
.tablewrap th { position:sticky; top:0; z-index:1; }
td.when { white-space:nowrap; }
table.sortable th { cursor:pointer; } table.sortable th[data-dir]::after { content:" \\2195"; }
tbody tr:hover { background:#f8f9fa; }
td.addr { font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;
  white-space:nowrap; }
td.small, .small { font-size:12px; color:#495057; }
.tools { display:flex; gap:12px; align-items:center; margin:0 0 10px; }
.tools input { padding:6px 10px; border:1px solid #ced4da; border-radius:6px; min-width:320px;
  font:inherit; }
.chart svg { width:100%; height:auto; display:block; }
.chart .hover-column { fill:transparent; }
.chart .hover-column:hover { fill:rgba(0,0,0,.06); }
.empty { color:var(--muted); font-style:italic; padding:10px 0; }
.fhead, details.finding > summary { display:grid; grid-template-columns:86px 2.2fr 1.5fr 1.6fr 1.3fr 90px;
  gap:10px; align-items:start; padding:6px 10px; }
.fhead { font-weight:600; background:#f1f3f5; font-size:12.5px; border-radius:6px 6px 0 0; }
details.finding { border-bottom:1px solid var(--line); border-left:4px solid var(--low); }
details.finding.medium { border-left-color:var(--medium); }
details.finding.high { border-left-color:var(--high); }
details.finding.critical { border-left-color:var(--critical); }
details.finding > summary { cursor:pointer; list-style:none; }
details.finding > summary::-webkit-details-marker { display:none; }
details.finding > summary:hover { background:#f8f9fa; }
details.finding[open] > summary { background:#f1f3f5; }
details.finding .title { font-weight:600; }
details.finding dl { display:grid; grid-template-columns:130px 1fr; gap:4px 12px;
  margin:0; padding:8px 14px 12px 106px; }
details.finding dt { color:var(--muted); font-size:12.5px; }
details.finding dd { margin:0; }
.tech { font-weight:600; }
pre { background:#f8f9fa; border:1px solid var(--line); border-radius:4px; padding:8px;
  font-size:11.5px; overflow:auto; max-height:320px; margin:6px 0; }
table.explain { width:auto; min-width:420px; margin:4px 0; }
table.explain td, table.explain th { padding:3px 10px; position:static; }
.verdict { border-radius:6px; padding:8px 12px; margin:0 0 10px; font-weight:600; }
.verdict.ok { background:#ebfbee; color:#2b8a3e; border:1px solid #8ce99a; }
.verdict.bad { background:#fff5f5; color:#c92a2a; border:1px solid #ffa8a8; }
.verdict.na { background:#f8f9fa; color:#495057; border:1px solid var(--line); }
footer { color:var(--muted); font-size:12px; text-align:center; padding:10px; }
@media print { nav { display:none; } th { position:static; } section { break-inside:avoid; }
  body { background:#fff; } }
"""

TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="generator" content="edge-agent {{ version }}">
<title>{{ plant.title }}</title>
<style>{{ css|safe }}</style>
</head>
<body>
<header class="top">
<h1>{{ plant.title }}</h1>
<div class="meta">{{ kind_label }}: {{ plant.source }} · {{ period }}
 · report made {{ generated }} UTC by edge-agent {{ version }}</div>
</header>
<nav>
<a href="#overview">Overview</a><a href="#map">Network map</a><a href="#inventory">Inventory</a>
<a href="#traffic">Traffic</a><a href="#timeline">Anomaly timeline</a>
<a href="#findings">Findings</a><a href="#verification">Verification</a>
<a href="#sensors">Sensors</a>
</nav>
<main>
<div class="cards" id="overview">
 <div class="card"><div class="n">{{ n_devices }}</div><div class="l">devices</div></div>
 <div class="card {{ 'warn' if n_new else '' }}"><div class="n">{{ n_new }}</div>
  <div class="l">new devices</div></div>
 <div class="card {{ 'bad' if n_vuln else '' }}"><div class="n">{{ n_vuln }}</div>
  <div class="l">with advisories</div></div>
 <div class="card"><div class="n">{{ n_conv }}</div><div class="l">OT conversations</div></div>
 <div class="card {{ 'bad' if sev.critical or sev.high else ('warn' if sev.medium else 'good') }}">
  <div class="n">{{ plant.findings_total }}</div><div class="l">findings
  {%- for s in severities if sev[s] %} · {{ sev[s] }} {{ s }}{% endfor %}</div></div>
 <div class="card {{ verify_class }}"><div class="n">{{ verify_head }}</div>
  <div class="l">signatures &amp; chain</div></div>
</div>
{% for n in plant.notes %}<p class="note">{{ n }}</p>{% endfor %}

<section id="map">
<h2>Communication map</h2>
<p class="note">Devices in bands by what they do; dashed boxes are subnets. Arrows go from the
client to the server, labelled with the protocol and its function mix. Point at a device or an
arrow for its details; click a device to find it in the inventory.</p>
{% for m in maps %}
{% if maps|length > 1 %}<h3>Site {{ m.site }}</h3>{% endif %}
<p class="note">{{ m.nodes }} devices, {{ m.edges }} conversations
{%- for n in m.notes %} · {{ n }}{% endfor %}</p>
<div class="mapwrap">{{ m.svg|safe }}</div>
{% else %}<p class="empty">No devices in this source.</p>
{% endfor %}
<div class="legend">
{% for tier, label in tiers %}<span><svg width="16" height="16" viewBox="-8 -8 16 16">
{%- if tier == 'controller' %}<rect x="-7" y="-7" width="14" height="14" rx="2" fill="{{ tier_colors[tier] }}"/>
{%- else %}<circle r="7" fill="{{ tier_colors[tier] }}"/>{% endif %}</svg>{{ label }}</span>{% endfor %}
<span><svg width="20" height="20" viewBox="-10 -10 20 20"><circle r="5" fill="#1971c2"/><circle r="8.5" fill="none" stroke="#f76707" stroke-width="2.5"/></svg>writes to a device</span>
<span><svg width="20" height="20" viewBox="-10 -10 20 20"><circle r="5" fill="#7048e8"/><circle r="8.5" fill="none" stroke="#e03131" stroke-width="2.5"/></svg>stops, starts, resets or programs a device</span>
<span><svg width="30" height="14" viewBox="0 0 30 14"><rect x="1" y="1" width="28" height="12" rx="6" fill="#1c7ed6"/><text x="15" y="10.5" font-size="9" font-weight="700" fill="#fff" text-anchor="middle">NEW</text></svg>new device</span>
<span><svg width="18" height="16" viewBox="-9 -9 18 16"><path d="M0,-8 L8,6 L-8,6 z" fill="#e03131"/><text x="0" y="4" font-size="10" font-weight="700" fill="#fff" text-anchor="middle">!</text></svg>known advisories</span>
<span><svg width="34" height="10"><line x1="2" y1="5" x2="32" y2="5" stroke="#4c6ef5" stroke-width="2.5"/></svg>reads, monitoring</span>
<span><svg width="34" height="10"><line x1="2" y1="5" x2="32" y2="5" stroke="#f76707" stroke-width="2.5"/></svg>writes</span>
<span><svg width="34" height="10"><line x1="2" y1="5" x2="32" y2="5" stroke="#e03131" stroke-width="2.5" stroke-dasharray="7 3"/></svg>control / program / firmware</span>
<span><svg width="34" height="10"><line x1="2" y1="5" x2="32" y2="5" stroke="#adb5bd" stroke-width="2" stroke-dasharray="2 3"/></svg>other IP traffic</span>
</div>
</section>

<section id="inventory">
<h2>Inventory</h2>
<div class="tools"><input type="search" data-filter="inventory-rows" placeholder="Filter devices: address, vendor, role, NEW ...">
<span class="small" id="inventory-rows-count">{{ rows|length }} of {{ rows|length }}</span></div>
{% if rows %}
<div class="tablewrap"><table class="sortable" id="inventory-table"><thead><tr>
<th>Address</th>{% if multi_site %}<th>Site</th>{% endif %}<th>MAC</th><th>MAC vendor</th><th>Vendor</th><th>Model</th>
<th>Firmware</th><th>Advisories</th><th>Role</th><th>Speaks</th><th>First seen</th><th>Last seen</th>
</tr></thead><tbody id="inventory-rows">
{% for r in rows %}<tr data-row data-ip="{{ r.address }}" data-key="{{ r.key }}">
<td class="addr" data-sort="{{ r.sort }}">{{ r.address }}{% for t in r.tags %} <span class="tag {{ t[0] }}">{{ t[1] }}</span>{% endfor %}</td>
{% if multi_site %}<td>{{ r.site }}</td>{% endif %}
<td class="addr small">{{ r.mac }}</td><td class="small">{{ r.mac_vendor }}</td><td>{{ r.vendor }}</td>
<td>{{ r.model }}</td><td>{{ r.firmware }}{% if r.fw_status %}<br><span class="tag {{ 'vuln' if r.vulnerable else '' }}">{{ r.fw_status }}</span>{% endif %}</td>
<td class="small">{% for a in r.advisories %}<div><b>{{ a.id }}</b>{% if a.severity %} ({{ a.severity }}){% endif %}{% if a.title %} {{ a.title }}{% endif %}</div>{% endfor %}</td>
<td>{{ r.tier }}</td><td class="small">{{ r.roles }}</td>
<td class="small when" data-sort="{{ r.first_sort }}">{{ r.first }}</td><td class="small when" data-sort="{{ r.last_sort }}">{{ r.last }}</td>
</tr>
{% endfor %}</tbody></table></div>
{% else %}<p class="empty">No devices in this source.</p>{% endif %}
</section>

<section id="traffic">
<h2>Traffic per protocol</h2>
{% if traffic.svg %}<div class="chart">{{ traffic.svg|safe }}</div>{% endif %}
<p class="note">{{ traffic.note }}{% if traffic.svg %} · point at the chart for the numbers of a column{% endif %}</p>
</section>

<section id="timeline">
<h2>Anomaly timeline</h2>
{% if anomaly.svg %}<div class="chart">{{ anomaly.svg|safe }}</div>{% endif %}
<p class="note">{{ anomaly.note }}</p>
</section>

<section id="findings">
<h2>Findings</h2>
{% if findings %}
<div class="tools"><input type="search" data-filter="finding-list" placeholder="Filter findings: rule, address, technique, severity ...">
<span class="small" id="finding-list-count">{{ findings|length }} of {{ findings|length }}</span></div>
<p class="note">Most severe first. The same finding recurring in several windows is listed once, with its count; click a finding for why it matters, the model's explanation and the messages involved.
{%- if plant.findings_hidden %} {{ plant.findings_hidden }} less severe or older finding(s) not listed.{% endif %}</p>
<div id="finding-list">
<div class="fhead"><span>severity</span><span>finding</span><span>ATT&amp;CK for ICS</span><span>who</span><span>when (UTC)</span><span>count</span></div>
{% for f in findings %}
<details data-row class="finding {{ f.severity }}" data-rule="{{ f.rule }}" data-severity="{{ f.severity }}"
 data-src="{{ f.src or '' }}" data-dst="{{ f.dst or '' }}" data-technique="{{ f.technique or '' }}">
<summary><span><span class="sev {{ f.severity }}">{{ f.severity }}</span></span>
<span class="title">{{ f.title }}<br><span class="small">{{ f.detail_short }}</span></span>
<span>{% if f.technique %}<span class="tech">{{ f.technique }}</span> {{ f.technique_name or '' }}{% else %}-{% endif %}</span>
<span class="addr">{{ f.src or '?' }}{% if f.dst %} → {{ f.dst }}{% endif %}{% if f.proto %}<br><span class="small">{{ f.proto }}{% if multi_site %} · site {{ f.site }}{% endif %}</span>{% endif %}</span>
<span class="small">{{ f.when }}</span>
<span>{{ f.count }}{% if f.windows > 1 %}<span class="small"> in {{ f.windows }} windows</span>{% endif %}</span></summary>
<dl>
<dt>Why it matters</dt><dd>{{ f.reason }}</dd>
<dt>What was seen</dt><dd>{{ f.detail }}</dd>
<dt>Rule</dt><dd>{{ f.rule }} · agent {{ f.agent }}{% if multi_site %} at site {{ f.site }}{% endif %}</dd>
{% if f.score is not none %}<dt>Model score</dt><dd>{{ '%.4g'|format(f.score) }}{% if f.threshold %} against the threshold {{ '%.4g'|format(f.threshold) }} ({{ '%.1f'|format(f.score / f.threshold) }}×){% endif %}{% if f.windows > 1 %}, the highest of its {{ f.windows }} windows{% endif %}</dd>{% endif %}
{% if f.explanation %}<dt>Explanation</dt><dd><table class="explain"><thead><tr><th>feature</th><th>observed</th><th>expected</th><th>share of the error</th></tr></thead><tbody>
{% for x in f.explanation %}<tr><td>{{ x.feature }}</td><td>{{ x.observed }}</td><td>{{ x.expected }}</td><td>{{ x.share }}</td></tr>{% endfor %}
</tbody></table></dd>{% endif %}
{% if f.messages %}<dt>Messages</dt><dd>{% for m in f.messages %}<pre>{{ m }}</pre>{% endfor %}</dd>
{% else %}<dt>Messages</dt><dd class="small">none kept (a window-level finding)</dd>{% endif %}
</dl>
</details>
{% endfor %}
</div>
{% else %}<p class="empty">No findings in this source.</p>{% endif %}
</section>

<section id="verification">
<h2>Verification</h2>
{% for v in verifications %}
<h3>{{ v.label }}</h3>
{% if v.verdict %}
<div class="verdict {{ 'ok' if v.verdict.ok else 'bad' }}">{{ 'INTACT' if v.verdict.ok else 'NOT INTACT' }}:
 {{ v.verdict.documents }} document(s){% if v.kinds %} ({{ v.kinds }}){% endif %}
 {%- if v.verdict.agent_id %} from agent {{ v.verdict.agent_id }} at site {{ v.verdict.site }}{% endif %}
 {%- if v.verdict.first_seq is not none %}, summaries {{ v.verdict.first_seq }}..{{ v.verdict.last_seq }}{% endif %}</div>
<p class="small">Signed by key {{ v.verdict.kids|join(', ') or '-' }}{% if v.verdict.last_hash %} · last summary hash <span class="addr">{{ v.verdict.last_hash }}</span>{% endif %}</p>
{% for n in v.verdict.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if v.verdict.problems %}
<table><thead><tr><th>#</th><th>seq</th><th>problem</th><th>detail</th></tr></thead><tbody>
{% for p in v.problems %}<tr><td>{{ p.index if p.index is not none else '-' }}</td><td>{{ p.seq if p.seq is not none else '' }}</td><td>{{ p.name }}</td><td>{{ p.detail }}</td></tr>{% endfor %}
</tbody></table>
{% if v.more %}<p class="note">... and {{ v.more }} more.</p>{% endif %}
<p class="small">{% for name, count in v.counts %}<b>{{ name }}</b> ({{ count }}): {{ meaning[name] }}<br>{% endfor %}</p>
{% endif %}
{% else %}<div class="verdict na">Not verified: {{ v.unavailable }}</div>{% endif %}
{% endfor %}
</section>

<section id="sensors">
<h2>Sensors</h2>
<table><thead><tr><th>Agent</th><th>Site</th><th>Version</th><th>Summaries</th><th>Period</th>
<th>Packets</th><th>Capture drops</th><th>Baseline rules</th><th>Model</th><th>Suppressed findings</th></tr></thead><tbody>
{% for a in agents %}<tr><td>{{ a.agent_id }}</td><td>{{ a.site }}</td><td>{{ a.versions }}</td><td>{{ a.summaries }}</td>
<td class="small">{{ a.period }}</td><td>{{ a.packets }}</td><td>{{ a.drops }}</td><td class="small">{{ a.baseline }}</td>
<td class="small">{{ a.model }}</td><td>{{ a.suppressed }}</td></tr>
{% endfor %}</tbody></table>
</section>
</main>
<footer>edge-agent {{ version }} · times in UTC · this page fetches nothing and works offline</footer>
<script>{{ script|safe }}</script>
</body>
</html>
"""


def _stamp(ts: Any, seconds: bool = True) -> str:
    if not isinstance(ts, (int, float)) or not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.gmtime(ts))


def _sort_address(address: str) -> str:
    import ipaddress
    try:
        ip = ipaddress.ip_address(address)
        return f"{ip.version}{int(ip):040d}"
    except ValueError:
        return f"9{address}"


def advisory(v: Any) -> dict[str, str]:
    """One advisory as id, title and severity, whatever shape the firmware profiles give it."""
    if not isinstance(v, dict):
        return {"id": str(v), "title": "", "severity": ""}
    ident = next((str(v[k]) for k in ("advisory", "tracking_id", "id", "cve", "name") if v.get(k)),
                 "advisory")
    cves = v.get("cves")
    title = str(v.get("title") or v.get("summary") or "")
    if isinstance(cves, (list, tuple)) and cves:
        title = f"{title} ({', '.join(map(str, cves[:4]))}{' ...' if len(cves) > 4 else ''})"
    sev = v.get("severity") or v.get("cvss") or v.get("cvss_score") or ""
    return {"id": ident, "title": title.strip(), "severity": str(sev)}


def _inventory(plant: Plant) -> list[dict[str, Any]]:
    rows = []
    for n in sorted(plant.nodes.values(), key=lambda n: (n.site, _sort_address(n.address))):
        a, ident = n.asset, n.asset.get("identity") or {}
        tags = [t for t, on in ((("new", "NEW"), n.new), (("vuln", "advisories"), n.vulnerable),
                                (("programmer", "programs"), n.programmer),
                                (("writer", "writes"), n.writer),
                                (("", "not in inventory"), not n.in_inventory)) if on]
        rows.append({
            "address": n.address, "key": n.key, "site": n.site, "sort": _sort_address(n.address),
            "tags": tags, "mac": a.get("mac") or "", "mac_vendor": a.get("mac_vendor") or "",
            "vendor": ident.get("vendor") or "",
            "model": ident.get("model") or ident.get("product") or ident.get("name") or "",
            "firmware": ident.get("firmware") or ident.get("revision") or "",
            "fw_status": firmware_status(a) or "", "vulnerable": n.vulnerable,
            "advisories": [advisory(v) for v in vulnerabilities(a)],
            "tier": TIER_LABELS[n.tier].split(" (")[0], "roles": ", ".join(a.get("roles") or ()),
            "first": _stamp(a.get("first_seen"), False), "last": _stamp(a.get("last_seen"), False),
            "first_sort": f"{a.get('first_seen') or 0:020.6f}",
            "last_sort": f"{a.get('last_seen') or 0:020.6f}"})
    return rows


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _finding(f: FindingRow) -> dict[str, Any]:
    when = _stamp(f.first_ts)
    if f.last_ts - f.first_ts >= 1:
        when += f" .. {_stamp(f.last_ts)}"
    explanation = []
    for x in f.explanation or ():
        if isinstance(x, dict):
            share = x.get("contribution", x.get("share"))
            explanation.append({"feature": x.get("feature", "?"),
                                "observed": _number(x.get("observed", "")),
                                "expected": _number(x.get("expected", "")),
                                "share": f"{share:.0%}" if isinstance(share, (int, float)) else ""})
    messages = []
    for m in f.messages:
        text = json.dumps(m, indent=1, ensure_ascii=False, default=str)
        messages.append(text if len(text) <= MAX_MESSAGE_CHARS else
                        text[:MAX_MESSAGE_CHARS] + "\n... (cut)")
    detail = f.detail if len(f.detail) <= 90 else f.detail[:89] + "…"
    return {**f.__dict__, "when": when, "technique_name": technique_name(f.technique),
            "detail_short": detail,
            "explanation": explanation, "messages": messages}


def _verifications(plant: Plant) -> list[dict[str, Any]]:
    out = []
    for v in plant.verifications:
        d: dict[str, Any] = {"label": v.label, "verdict": v.verdict, "unavailable": v.unavailable}
        if v.verdict is not None:
            d["kinds"] = ", ".join(f"{n} {k}" for k, n in sorted(v.verdict.counts.items()))
            d["problems"] = v.verdict.problems[:MAX_PROBLEMS_SHOWN]
            d["more"] = sum(v.verdict.problem_counts.values()) - len(d["problems"])
            d["counts"] = sorted(v.verdict.problem_counts.items())
        out.append(d)
    return out


def _agents(plant: Plant) -> list[dict[str, Any]]:
    rows = []
    for a in sorted(plant.agents.values(), key=lambda a: (a.site, a.agent_id)):
        cap = (a.health or {}).get("capture") or {}
        det = a.detection or {}
        model = det.get("model")
        if isinstance(model, dict):
            model = " ".join(str(model[k]) for k in ("name", "version") if model.get(k)) or "loaded"
        rows.append({
            "agent_id": a.agent_id, "site": a.site, "versions": ", ".join(sorted(a.versions)) or "-",
            "summaries": a.summaries,
            "period": f"{_stamp(a.first_ts, False)} .. {_stamp(a.last_ts, False)}",
            "packets": (a.health or {}).get("packets_total", "-"),
            "drops": (cap.get("dropped") or 0) + (cap.get("if_dropped") or 0) if cap else "-",
            "baseline": det.get("baseline_rules", "-"), "model": model or "none",
            "suppressed": det.get("suppressed_findings", 0)})
    return rows


KIND_LABELS = {"capture": "Capture", "state": "Agent state", "bundle": "Export bundle",
               "collector": "Collector database"}


def render(plant: Plant, maps: list[SiteMap], traffic: Chart, anomaly: Chart,
           now: float | None = None) -> str:
    from jinja2 import Environment
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    sev: Counter[str] = plant.finding_severities
    verdicts = [v.verdict for v in plant.verifications if v.verdict is not None]
    if not plant.signed:
        verify_head, verify_class = "n/a", ""
    elif verdicts and all(v.ok for v in verdicts):
        verify_head, verify_class = "intact", "good"
    elif verdicts:
        verify_head, verify_class = "NOT intact", "bad"
    else:
        verify_head, verify_class = "unchecked", "warn"
    starts = [w.start for w in plant.windows]
    period = (f"{_stamp(min(starts), False)} .. {_stamp(max(w.end for w in plant.windows), False)}"
              f" UTC, {len(plant.windows)} window{'s' * (len(plant.windows) != 1)}"
              if starts else "no summaries")
    nodes: list[Node] = list(plant.nodes.values())
    return env.from_string(TEMPLATE).render(
        plant=plant, maps=maps, traffic=traffic, anomaly=anomaly, csp=csp, css=CSS,
        script=SCRIPT, version=__version__, kind_label=KIND_LABELS.get(plant.kind, plant.kind),
        period=period, generated=_stamp(time.time() if now is None else now),
        n_devices=len(nodes), n_new=sum(n.new for n in nodes),
        n_vuln=sum(n.vulnerable for n in nodes),
        n_conv=sum(1 for e in plant.edges if e.ot), sev=sev,
        severities=sorted(RANK, key=lambda s: -RANK[s]), verify_head=verify_head,
        verify_class=verify_class, tiers=list(TIER_LABELS.items()), tier_colors=TIER_COLORS,
        rows=_inventory(plant), multi_site=len(plant.sites) > 1,
        findings=[_finding(f) for f in plant.findings], verifications=_verifications(plant),
        meaning=MEANING, agents=_agents(plant), family_labels=FAMILY_LABELS)
