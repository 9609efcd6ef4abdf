"""``edge-agent report``: the plant on one self-contained HTML page.

``sources.py`` reads a capture, a state directory, an export bundle or the collector's database
into one :class:`~edge_agent.report.plant.Plant`; ``netmap.py`` draws the communication map
(layout by networkx), ``charts.py`` the charts (pygal), ``page.py`` the page (Jinja2).

The three libraries are the ``report`` extra (``pip install 'edge-agent[report]'``): a gateway
that only runs the agent never needs them, so they are imported only when a report is made.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

REQUIREMENTS = {"pygal": "pygal", "networkx": "networkx", "jinja2": "Jinja2"}
INSTALL_HINT = "pip install 'edge-agent[report]'"


def missing_dependencies() -> list[str]:
    """The report libraries that are not installed, by their package names."""
    return [pkg for mod, pkg in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def render_plant(plant: Any, now: float | None = None) -> str:
    """The page for a plant."""
    from edge_agent.report import charts, netmap, page
    maps = []
    for site in plant.sites:
        nodes = [n for n in plant.nodes.values() if n.site == site]
        if nodes:
            maps.append(netmap.draw(site, nodes, [e for e in plant.edges if e.site == site]))
    return page.render(plant, maps, charts.traffic(plant), charts.anomaly(plant), now)


def write(html: str, out: str | Path) -> int:
    """Write the page atomically (a half-written report on a USB stick helps nobody)."""
    out = Path(out)
    data = html.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)
