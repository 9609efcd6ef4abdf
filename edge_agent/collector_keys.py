"""The keys enrolled at the collector: a key directory read into a :class:`KeyRing`.

One file per agent, ``DIR/<agent_id>.<pem|pub|jwk|jwks|json>``, or several in ``DIR/<agent_id>/``
(during a key rotation); each key is known by its RFC 7638 kid. The collector
(:mod:`edge_agent.collector`) verifies documents against the ring, and its store
(:mod:`edge_agent.collector_store`) keeps the enrolment in force.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.summary.sign import load_public_keys

KEY_SUFFIXES = (".pem", ".pub", ".jwk", ".jwks", ".json")


@dataclass(frozen=True)
class KeyRing:
    """The enrolled public keys: by RFC 7638 kid, each with the agent(s) it is enrolled for."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    agents: dict[str, frozenset[str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)          # kid -> where it came from
    errors: tuple[str, ...] = ()

    def for_agent(self, agent_id: str | None) -> dict[str, Ed25519PublicKey]:
        return {kid: k for kid, k in self.keys.items() if agent_id in self.agents[kid]}

    def enrolled(self) -> list[tuple[str, str]]:
        """``(agent_id, kid)`` pairs, sorted."""
        return sorted((a, kid) for kid, agents in self.agents.items() for a in agents)


def _agent_of(path: Path) -> str | None:
    name = path.name
    for suffix in KEY_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return None


def key_files(directory: str | Path) -> Iterator[tuple[str, Path]]:
    """``(agent_id, file)``: ``DIR/<agent_id>.<pem|pub|jwk|jwks|json>`` and every such file in
    ``DIR/<agent_id>/`` (for several keys per agent, e.g. during a key rotation)."""
    root = Path(directory)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for sub in sorted(entry.iterdir()):
                if sub.is_file() and not sub.name.startswith(".") and _agent_of(sub):
                    yield entry.name, sub
        elif entry.is_file():
            agent = _agent_of(entry)
            if agent:
                yield agent, entry


def key_dir_stamp(directory: str | Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a key file is added, removed or rewritten."""
    try:
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                     for _, p in key_files(directory))
    except OSError:
        return ()


def load_key_dir(directory: str | Path) -> KeyRing:
    """Every key under ``directory`` (see :func:`key_files`); a file that cannot be read is
    named in ``errors`` and skipped. OSError if the directory itself cannot be read."""
    keys: dict[str, Ed25519PublicKey] = {}
    agents: dict[str, set[str]] = {}
    files: dict[str, str] = {}
    errors: list[str] = []
    for agent, path in key_files(directory):
        try:
            found = load_public_keys(path)
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
            continue
        for kid, key in found.items():
            keys[kid] = key
            agents.setdefault(kid, set()).add(agent)
            files.setdefault(kid, str(path))
    for kid, names in agents.items():
        if len(names) > 1:
            errors.append(f"kid {kid} is enrolled for several agents ({', '.join(sorted(names))}): "
                          "a cloned device key?")
    return KeyRing(keys, {k: frozenset(v) for k, v in agents.items()}, files, tuple(errors))
