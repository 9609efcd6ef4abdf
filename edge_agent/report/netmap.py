"""The communication map: one SVG per site, devices in role bands, conversations as arrows.

Layout is networkx's: a force-directed layout (``spring_layout``, seeded, so the same plant
draws the same way) says which devices belong near each other, which orders the subnets of a
band and the devices of a subnet; ``multipartite_layout`` then places the bands' rows. This
module only turns those positions into SVG elements: circles, squares, curves and text.

Bands, top to bottom, as a plant engineer reads a Purdue diagram: engineering workstations
(they stop, start, reset or program a controller), HMIs and other clients (they poll and
write), controllers and other servers (PLCs, RTUs, IEDs, publishers), hosts with no OT role.
"""
from __future__ import annotations

import ipaddress
import math
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from edge_agent.report.plant import ENGINEERING_FAMILIES, Edge, Node, firmware_status, vulnerabilities

TIERS = ("engineering", "client", "controller", "other")
TIER_LABELS = {"engineering": "Engineering workstations", "client": "HMIs, SCADA, clients",
               "controller": "Controllers, servers (PLC, RTU, IED)", "other": "Other hosts"}
TIER_LINES = {"engineering": ("Engineering", "workstations"), "client": ("HMIs, SCADA,", "clients"),
              "controller": ("Controllers,", "servers"), "other": ("Other hosts", "no OT role")}
TIER_COLORS = {"engineering": "#7048e8", "client": "#1971c2", "controller": "#2f9e44",
               "other": "#868e96"}
FAMILY_LABELS = {"read": "read", "write": "write", "stop": "stop", "start": "start",
                 "restart": "restart", "program_download": "program download",
                 "program_upload": "program upload", "firmware": "firmware",
                 "diagnostic": "diagnostics", "identify": "identify", "session": "session",
                 "time": "time sync", "io": "cyclic I/O", "other": "other"}
MAX_ROW = 14                 # devices per row before a band wraps
MIN_ROW = 8
MIN_COLS = 6                 # a small plant still gets a readable width
DX, DY = 150, 150            # grid pitch in px
LEFT, TOP = 150, 30          # room for the band names, and above the first row
NODE_R = 13
MAX_LABELLED_EDGES = 60      # past this many conversations, arrows to a subnet box merge
GROUP_MIN = 3                # conversations of one client into one box that merge
MAX_LABELLED_ARROWS = 90     # past this, protocol and mix are in each arrow's hover text
MAX_OTHER_EDGES = 300        # conversations with no OT protocol drawn at most
SPRING_MAX_NODES = 500       # networkx needs scipy for larger spring layouts


@dataclass
class SiteMap:
    site: str
    svg: str
    nodes: int
    edges: int
    labelled: bool
    notes: list[str]


def edge_class(e: Edge) -> str:
    fams = set(e.families)
    if not e.ot:
        return "other"
    if fams & ENGINEERING_FAMILIES:
        return "control"
    if "write" in fams:
        return "write"
    return "read"


def label_lines(e: Edge) -> tuple[str, str]:
    """An arrow's visible label under its protocol: the main functions with their shares,
    then every engineering function it carried, however rare."""
    shown = [(f, s) for f, s in e.mix() if f not in ENGINEERING_FAMILIES
             and f not in ("other", "session")][:2]
    if not shown:
        shown = [(f, s) for f, s in e.mix() if f not in ENGINEERING_FAMILIES][:1]
    mix = " · ".join(f"{FAMILY_LABELS.get(f, f)} {_share(s)}" for f, s in shown)
    control = " · ".join(FAMILY_LABELS.get(f, f) for f, _ in e.mix() if f in ENGINEERING_FAMILIES)
    return mix, control


def _share(s: float) -> str:
    return "<1%" if s < 0.01 else ">99%" if 0.99 < s < 1 else f"{s:.0%}"


def _stamp(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def node_title(n: Node) -> str:
    a = n.asset
    ident = a.get("identity") or {}
    lines = [n.address + ("" if n.in_inventory else "  (not in the inventory)")]
    if a.get("mac") and a.get("mac") != n.address:
        lines.append(f"MAC {a['mac']}" + (f" ({a['mac_vendor']})" if a.get("mac_vendor") else ""))
    who = " ".join(str(ident[k]) for k in ("vendor", "model", "product") if ident.get(k))
    if who:
        lines.append(who)
    for k in ("firmware", "name", "serial"):
        if ident.get(k):
            lines.append(f"{k}: {ident[k]}")
    if firmware_status(a):
        lines.append(f"firmware status: {firmware_status(a)}")
    vulns = vulnerabilities(a)
    if vulns:
        lines.append(f"advisories: {len(vulns)}")
    lines.append(f"role: {TIER_LABELS[n.tier]}" + (" · writes" if n.writer else "")
                 + (" · programs/controls" if n.programmer else ""))
    if a.get("roles"):
        lines.append("speaks: " + ", ".join(a["roles"]))
    if n.new:
        lines.append("NEW device")
    if a.get("first_seen"):
        lines.append(f"seen {_stamp(a.get('first_seen'))} .. {_stamp(a.get('last_seen'))} UTC")
    return "\n".join(lines)


def short_name(n: Node) -> str:
    ident = n.asset.get("identity") or {}
    name = (ident.get("name") or " ".join(str(ident[k]) for k in ("vendor", "model")
                                           if ident.get(k)) or ident.get("product")
            or n.asset.get("mac_vendor") or "")
    name = str(name)
    return name if len(name) <= 24 else name[:23] + "…"


def _address_key(address: str) -> tuple[int, Any]:
    try:
        ip = ipaddress.ip_address(address)
        return (ip.version, int(ip))
    except ValueError:
        return (9, address)


def _order(nodes: list[Node], edges: list[Edge]) -> tuple[dict[str, float], dict[str, int],
                                                        str | None]:
    """A place in line per device: communities (networkx's Louvain) keep a cell's HMI and its
    PLCs together, and a force-directed layout orders the communities and their members, so
    arrows stay short and cross little.

    A conversation weighs less the more servers its client polls: a historian reading every
    PLC must not glue all cells into one lump.
    """
    import networkx as nx
    by_address = sorted(nodes, key=lambda n: _address_key(n.address))
    if len(nodes) < 3:
        return ({n.address: float(i) for i, n in enumerate(by_address)},
                {n.address: 0 for n in nodes}, None)
    fanout: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        fanout[e.client].add(e.server)
    g = nx.Graph()
    g.add_nodes_from(n.address for n in by_address)
    for e in sorted(edges, key=lambda e: (e.client, e.server, e.proto)):
        if g.has_node(e.client) and g.has_node(e.server) and e.client != e.server:
            w = (1.0 + math.log10(1 + e.messages)) / len(fanout[e.client])
            if g.has_edge(e.client, e.server):
                g[e.client][e.server]["weight"] += w
            else:
                g.add_edge(e.client, e.server, weight=w)
    communities = nx.community.louvain_communities(g, weight="weight", seed=7)
    note = None
    if len(nodes) < SPRING_MAX_NODES:
        import numpy as np
        pos = nx.spring_layout(g, seed=7, weight="weight", method="force")
        names = list(pos)
        xy = np.array([pos[k] for k in names], dtype=float)
        xy -= xy.mean(axis=0)
        # the layout's longest axis becomes the line the bands' rows follow
        axis = np.linalg.svd(xy, full_matrices=False)[2][0]
        along = {k: float(v) for k, v in zip(names, xy @ axis)}
    else:
        along = {n.address: float(i) for i, n in enumerate(by_address)}
        note = (f"{len(nodes)} devices: grouped by community and address (no force layout "
                f"past {SPRING_MAX_NODES}).")
    ranked = sorted(communities, key=lambda c: (sum(along[a] for a in c) / len(c), min(c)))
    order: dict[str, float] = {}
    community: dict[str, int] = {}
    for rank, members in enumerate(ranked):
        for i, a in enumerate(sorted(members, key=lambda a: (along[a], _address_key(a)))):
            order[a] = rank * 100_000 + i
            community[a] = rank
    return order, community, note


def _row_length(nodes: list[Node], community: dict[str, int]) -> int:
    """Devices per row: the usual size of a cell of controllers (a community of them), so a
    row holds one cell and its HMI's arrow goes to one box."""
    sizes = sorted(n for n in Counter(community[x.address] for x in nodes
                                      if x.tier == "controller").values() if n >= 4)
    if not sizes:
        return MAX_ROW
    return max(MIN_ROW, min(MAX_ROW, sizes[len(sizes) // 2]))


def _rows(nodes: list[Node], order: dict[str, float],
          community: dict[str, int]) -> list[tuple[str, list[Node]]]:
    """Rows of each band: subnets kept together, and within them communities, ordered by
    where the layout put them; a row breaks between communities when one would not fit."""
    width = _row_length(nodes, community)
    rows: list[tuple[str, list[Node]]] = []
    for tier in TIERS:
        members = [n for n in nodes if n.tier == tier]
        if not members:
            continue
        subnets: dict[str, list[Node]] = defaultdict(list)
        for n in members:
            subnets[n.subnet].append(n)
        ranked = sorted(subnets.values(), key=lambda ns: (
            sum(order[n.address] for n in ns) / len(ns), ns[0].subnet))
        current: list[Node] = []
        for subnet in ranked:
            groups: dict[int, list[Node]] = defaultdict(list)
            for n in subnet:
                groups[community[n.address]].append(n)
            if current and len(current) + len(subnet) > width:    # keep a subnet whole
                rows.append((tier, current))
                current = []
            for _, group in sorted(groups.items()):
                group.sort(key=lambda n: (order[n.address], _address_key(n.address)))
                if current and len(current) + len(group) > width and len(group) <= width:
                    rows.append((tier, current))
                    current = []
                for n in group:
                    if len(current) == width:
                        rows.append((tier, current))
                        current = []
                    current.append(n)
        if current:
            rows.append((tier, current))
    return rows


def _positions(rows: list[tuple[str, list[Node]]]) -> dict[str, tuple[float, float]]:
    import networkx as nx
    g = nx.Graph()
    for i, (_, row) in enumerate(rows):
        for n in row:
            g.add_node(n.address, layer=i)
    # multipartite_layout: each layer a row, its devices one unit apart, centred
    pos = nx.multipartite_layout(g, subset_key={i: [n.address for n in row]
                                                for i, (_, row) in enumerate(rows)},
                                 align="horizontal", scale=1)
    if len(g) < 2:
        return {n: (0.0, 0.0) for n in g}
    # Back to grid units: rescale_layout scaled by the largest extent of either axis.
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width = max(len(r) for _, r in rows) - 1
    height = len(rows) - 1
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    unit = span / max(width, height, 1)
    return {k: ((p[0] - min(xs)) / unit - (max(xs) - min(xs)) / unit / 2,
                (p[1] - min(ys)) / unit) for k, p in pos.items()}


def draw(site: str, nodes: list[Node], edges: list[Edge]) -> SiteMap:
    notes: list[str] = []
    by_address = {n.address: n for n in nodes}
    ot = [e for e in edges if e.ot and e.client in by_address and e.server in by_address
          and e.client != e.server]
    loops = sum(1 for e in edges if e.ot and e.client == e.server)
    if loops:
        notes.append(f"{loops} conversation(s) of a device with itself not drawn.")
    other = [e for e in edges if not e.ot and e.client in by_address and e.server in by_address
             and e.client != e.server]
    if len(other) > MAX_OTHER_EDGES:
        notes.append(f"{len(other) - MAX_OTHER_EDGES} of {len(other)} non-OT conversations "
                     "not drawn (the busiest are).")
        other = sorted(other, key=lambda e: -e.packets)[:MAX_OTHER_EDGES]
    order, community, note = _order(nodes, ot)
    if note:
        notes.append(note)
    rows = _rows(nodes, order, community)
    grid = _positions(rows)
    cols = max(MIN_COLS, max((len(r) for _, r in rows), default=1))
    width = LEFT + cols * DX + 20
    height = TOP + len(rows) * DY + 20
    cx = LEFT + (cols - 1) * DX / 2 + DX / 2

    def xy(address: str) -> tuple[float, float]:
        gx, gy = grid[address]
        return cx + gx * DX, TOP + 30 + gy * DY

    svg = ET.Element("svg", {
        "xmlns": "http://www.w3.org/2000/svg", "class": "netmap", "data-site": site,
        "viewBox": f"0 0 {width:.0f} {height:.0f}", "width": f"{width:.0f}",
        "role": "img", "aria-label": f"communication map of site {site}"})
    ET.SubElement(svg, "title").text = f"Communication map: site {site}"
    defs = ET.SubElement(svg, "defs")
    for cls in ("read", "write", "control", "other"):
        m = ET.SubElement(defs, "marker", {"id": f"arrow-{site}-{cls}", "viewBox": "0 0 10 10",
                                           "refX": "10", "refY": "5", "markerWidth": "11",
                                           "markerHeight": "11", "markerUnits": "userSpaceOnUse",
                                           "orient": "auto-start-reverse"})
        ET.SubElement(m, "path", {"d": "M0,0 L10,5 L0,10 z", "class": f"arrowhead {cls}"})

    bands = ET.SubElement(svg, "g", {"class": "bands"})
    tier_rows: dict[str, list[int]] = defaultdict(list)
    for i, (tier, _) in enumerate(rows):
        tier_rows[tier].append(i)
    for tier, idx in tier_rows.items():
        y0 = TOP + 30 + idx[0] * DY - DY / 2 + 8
        y1 = TOP + 30 + idx[-1] * DY + DY / 2 - 8
        ET.SubElement(bands, "rect", {"x": "4", "y": f"{y0:.0f}", "width": f"{width - 8:.0f}",
                                      "height": f"{y1 - y0:.0f}", "rx": "8",
                                      "class": f"band band-{tier}"})
        for j, line in enumerate(TIER_LINES[tier]):
            ET.SubElement(bands, "text", {"x": "14", "y": f"{y0 + 22 + 16 * j:.0f}",
                                          "class": "band-label"}).text = line
        n_tier = sum(len(rows[i][1]) for i in idx)
        ET.SubElement(bands, "text", {"x": "14", "y": f"{y0 + 58:.0f}", "class": "band-count"}
                      ).text = f"{n_tier} device{'s' * (n_tier != 1)}"

    boxes = ET.SubElement(svg, "g", {"class": "subnets"})
    segments: list[tuple[float, float, float]] = []       # x0, x1, y of a row's subnet box
    segment_of: dict[str, int] = {}
    for tier, row in rows:
        start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i].subnet != row[start].subnet:
                (x0, y), (x1, _) = xy(row[start].address), xy(row[i - 1].address)
                left, right = x0 - DX / 2 + 8, x1 + DX / 2 - 8
                ET.SubElement(boxes, "rect", {
                    "x": f"{left:.0f}", "y": f"{y - 46:.0f}", "width": f"{right - left:.0f}",
                    "height": "100", "rx": "6", "class": "subnet",
                    "data-subnet": row[start].subnet})
                ET.SubElement(boxes, "text", {"x": f"{left + 6:.0f}", "y": f"{y - 34:.0f}",
                                              "class": "subnet-label"}).text = row[start].subnet
                for n in row[start:i]:
                    segment_of[n.address] = len(segments)
                segments.append((left, right, y))
                start = i

    # A client polling several devices of one subnet box draws one arrow to the box once the
    # map is busy: the conversations it stands for are in its hover text and data-dsts.
    arrows: list[tuple[str, list[Edge], int | None]] = []
    grouped: dict[tuple[str, str, str, int], list[Edge]] = defaultdict(list)
    for e in sorted(ot, key=lambda e: (e.client, e.server, e.proto)):
        grouped[(e.client, e.proto, edge_class(e), segment_of[e.server])].append(e)
    busy = len(ot) > MAX_LABELLED_EDGES
    for (client, _, _, seg), members in grouped.items():
        if busy and len(members) >= GROUP_MIN:
            arrows.append((client, members, seg))
        else:
            arrows += [(client, [e], None) for e in members]
    if busy:
        notes.append(f"{len(ot)} OT conversations in {len(arrows)} arrows: a client's "
                     f"conversations with {GROUP_MIN} or more devices of one subnet box share "
                     "one arrow to the box.")
    labelled = len(arrows) <= MAX_LABELLED_ARROWS
    if not labelled:
        notes.append("Protocol and function mix are in each arrow's hover text (point at an "
                     "arrow).")
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    edge_layer = ET.SubElement(svg, "g", {"class": "edges"})
    label_layer = ET.SubElement(svg, "g", {"class": "edge-labels"})
    for e in sorted(other, key=lambda e: -e.packets):
        (x0, y0), (x1, y1) = xy(e.client), xy(e.server)
        path, _ = _curve(x0, y0, x1, y1, 0, e.client < e.server)
        g = ET.SubElement(edge_layer, "g", {"class": "edge other", "data-src": e.client,
                                            "data-dst": e.server, "data-proto": e.proto})
        ET.SubElement(g, "title").text = _edge_title(e)
        ET.SubElement(g, "path", {"d": path, "class": "hit"})
        ET.SubElement(g, "path", {"d": path, "class": "line", "stroke-width": "1",
                                  "marker-end": f"url(#arrow-{site}-other)"})
    for n_arrow, (client, members, seg) in enumerate(arrows):
        e = members[0] if seg is None else _merge(members)
        cls = edge_class(e)
        (x0, y0) = xy(client)
        if seg is None:
            (x1, y1), r1 = xy(e.server), NODE_R + 6
            target = e.server
        else:
            left, right, y = segments[seg]
            # aim at the box's rim, toward the client, within its middle half
            mid, half = (left + right) / 2, (right - left) / 4
            x1, y1, r1 = min(mid + half, max(mid - half, x0)), (y - 46 if y0 < y else y + 54), 2
            target = f"box{seg}"
        k = pairs[(client, target)]
        pairs[(client, target)] += 1
        path, (mx, my) = _curve(x0, y0, x1, y1, k, client < target, r1)
        attrs = {"class": f"edge {cls}" + (" group" if seg is not None else ""),
                 "data-src": client, "data-proto": e.proto, "data-arrow": str(n_arrow),
                 "data-families": " ".join(sorted(e.families)), "data-messages": str(e.messages)}
        if seg is None:
            attrs["data-dst"] = e.server
        else:
            attrs["data-dsts"] = " ".join(m.server for m in members)
        g = ET.SubElement(edge_layer, "g", attrs)
        ET.SubElement(g, "title").text = (_edge_title(e) if seg is None else
                                          _group_title(client, members, e))
        width = 1.2 + min(3.5, math.log10(1 + e.messages) * 0.8)
        ET.SubElement(g, "path", {"d": path, "class": "hit"})
        ET.SubElement(g, "path", {"d": path, "class": "line", "stroke-width": f"{width:.1f}",
                                  "marker-end": f"url(#arrow-{site}-{cls})"})
        if labelled:
            t = ET.SubElement(label_layer, "text", {
                "x": f"{mx:.0f}", "y": f"{my:.0f}", "class": f"edge-label {cls}",
                "data-src": client, "data-proto": e.proto, "data-arrow": str(n_arrow),
                **({"data-dst": e.server} if seg is None else
                   {"data-dsts": attrs["data-dsts"]})})
            ET.SubElement(t, "tspan", {"class": "proto"}).text = (
                e.proto if seg is None else f"{e.proto} ×{len(members)}")
            mix, control = label_lines(e)
            if mix:
                ET.SubElement(t, "tspan", {"x": f"{mx:.0f}", "dy": "1.2em"}).text = mix
            if control:
                ET.SubElement(t, "tspan", {"x": f"{mx:.0f}", "dy": "1.2em",
                                           "class": "control"}).text = control

    node_layer = ET.SubElement(svg, "g", {"class": "nodes"})
    for n in sorted(nodes, key=lambda n: _address_key(n.address)):
        x, y = xy(n.address)
        classes = ["node", f"tier-{n.tier}"] + [c for c, on in (
            ("writer", n.writer), ("programmer", n.programmer), ("new", n.new),
            ("vulnerable", n.vulnerable), ("uninventoried", not n.in_inventory)) if on]
        g = ET.SubElement(node_layer, "g", {
            "class": " ".join(classes), "data-ip": n.address, "data-key": n.key,
            "data-tier": n.tier, "data-new": str(n.new).lower(),
            "data-vulnerable": str(n.vulnerable).lower(),
            "transform": f"translate({x:.0f},{y:.0f})", "tabindex": "0"})
        ET.SubElement(g, "title").text = node_title(n)
        if n.programmer or n.writer:
            ring = "programmer" if n.programmer else "writer"
            ET.SubElement(g, "circle", {"r": str(NODE_R + 5), "class": f"ring {ring}"})
        if n.tier == "controller":
            ET.SubElement(g, "rect", {"x": str(-NODE_R), "y": str(-NODE_R),
                                      "width": str(2 * NODE_R), "height": str(2 * NODE_R),
                                      "rx": "3", "class": "shape",
                                      "fill": TIER_COLORS[n.tier]})
        else:
            ET.SubElement(g, "circle", {"r": str(NODE_R), "class": "shape",
                                        "fill": TIER_COLORS[n.tier]})
        if n.new:
            b = ET.SubElement(g, "g", {"class": "badge badge-new",
                                       "transform": f"translate({NODE_R - 2},{-NODE_R - 4})"})
            ET.SubElement(b, "rect", {"x": "0", "y": "-7", "width": "28", "height": "13",
                                      "rx": "6"})
            ET.SubElement(b, "text", {"x": "14", "y": "3"}).text = "NEW"
        if n.vulnerable:
            b = ET.SubElement(g, "g", {"class": "badge badge-vuln",
                                       "transform": f"translate({-NODE_R - 8},{-NODE_R - 6})"})
            ET.SubElement(b, "path", {"d": "M0,-8 L8,6 L-8,6 z"})
            ET.SubElement(b, "text", {"x": "0", "y": "4"}).text = "!"
        ET.SubElement(g, "text", {"y": str(NODE_R + 16), "class": "node-label"}).text = n.address
        name = short_name(n)
        if name:
            ET.SubElement(g, "text", {"y": str(NODE_R + 29), "class": "node-sub"}).text = name
    return SiteMap(site, ET.tostring(svg, encoding="unicode"), len(nodes), len(ot) + len(other),
                   labelled, notes)


def _merge(members: list[Edge]) -> Edge:
    """The conversations one arrow stands for, summed."""
    first = members[0]
    e = Edge(first.site, first.client, f"{len(members)} devices", first.proto, first.transport)
    for m in members:
        e.packets += m.packets
        e.bytes += m.bytes
        e.messages += m.messages
        e.anomalies += m.anomalies
        e.families.update(m.families)
        e.kinds.update(m.kinds)
        e.unclassified += m.unclassified
        e.ports |= m.ports
        e.windows = max(e.windows, m.windows)
        e.first_ts = m.first_ts if e.first_ts is None else min(e.first_ts, m.first_ts or e.first_ts)
        e.last_ts = m.last_ts if e.last_ts is None else max(e.last_ts, m.last_ts or e.last_ts)
    return e


def _group_title(client: str, members: list[Edge], total: Edge) -> str:
    head = _edge_title(total).split("\n")
    lines = [f"{client} → {len(members)} devices  {total.proto}"] + head[1:]
    lines.append("to: " + ", ".join(f"{m.server} ({m.messages})" for m in members[:40])
                 + (f" and {len(members) - 40} more" if len(members) > 40 else ""))
    return "\n".join(lines)


def _curve(x0: float, y0: float, x1: float, y1: float, k: int, forward: bool,
           end_gap: float = NODE_R + 6) -> tuple[str, tuple[float, float]]:
    """A quadratic curve from the client's rim to the server's, bent more for each further
    conversation between the same two devices (and always when they share a row)."""
    dx, dy = x1 - x0, y1 - y0
    dist = math.hypot(dx, dy) or 1.0
    ux, uy = dx / dist, dy / dist
    px, py = -uy, ux                      # perpendicular
    # straight between neighbouring rows; bent along a row, and past the rows in between
    bend = (0.18 * dist if abs(dy) <= 1 else
            0.22 * dist if abs(dx) < DX / 2 and abs(dy) > DY * 1.5 else 0.0) + 22.0 * k
    sign = 1 if forward else -1
    mx, my = (x0 + x1) / 2 + px * bend * sign, (y0 + y1) / 2 + py * bend * sign
    # leave the node shapes (and the arrowhead room) at both ends
    sx, sy = _toward(x0, y0, mx, my, NODE_R + 4)
    ex, ey = _toward(x1, y1, mx, my, end_gap)
    label = (0.25 * sx + 0.5 * mx + 0.25 * ex, 0.25 * sy + 0.5 * my + 0.25 * ey)
    return f"M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}", label


def _toward(x: float, y: float, tx: float, ty: float, d: float) -> tuple[float, float]:
    dist = math.hypot(tx - x, ty - y) or 1.0
    return x + (tx - x) / dist * d, y + (ty - y) / dist * d


def _edge_title(e: Edge) -> str:
    port = f" ({e.transport}/{', '.join(map(str, sorted(e.ports)))})" if e.ports else ""
    lines = [f"{e.client} → {e.server}  {e.proto}{port}",
             f"{e.messages} messages, {e.packets} packets, {e.bytes} bytes"
             f" in {e.windows} window{'s' * (e.windows != 1)}"]
    mix = e.mix()
    if mix:
        lines.append("mix: " + ", ".join(f"{FAMILY_LABELS.get(f, f)} {s:.1%}" for f, s in mix))
    if e.unclassified:
        lines.append(f"({e.unclassified} messages past the summaries' history limit: "
                     "function not recorded)")
    if e.kinds:
        lines.append("functions: " + ", ".join(f"{k} {n}" for k, n in e.kinds.most_common(8)))
    if e.anomalies:
        lines.append(f"{e.anomalies} decoder anomalies")
    lines.append(f"{_stamp(e.first_ts)} .. {_stamp(e.last_ts)} UTC")
    return "\n".join(lines)
