"""edge-agent: a lightweight passive security sensor for industrial (OT) networks."""

__version__ = "0.1.0"
