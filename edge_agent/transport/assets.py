"""The asset inventory on disk: one JSON document per device, in SQLite next to the spool."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from edge_agent.flows.assets import Asset

_SCHEMA = "CREATE TABLE IF NOT EXISTS assets (key TEXT PRIMARY KEY, last_seen REAL, doc TEXT)"


class AssetStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)

    def load(self) -> list[Asset]:
        return [Asset.from_dict(json.loads(doc))
                for (doc,) in self.db.execute("SELECT doc FROM assets ORDER BY last_seen")]

    def save(self, assets: list[dict[str, Any]]) -> None:
        """Store assets (as ``Asset.as_dict()``) in one transaction."""
        if not assets:
            return
        # Autocommit connection: an explicit transaction, so one fsync per window, not per asset.
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR REPLACE INTO assets VALUES (?, ?, ?)",
                                [(a["key"], a["last_seen"], json.dumps(a)) for a in assets])
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
