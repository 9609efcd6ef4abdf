"""Mutation fuzzing shared by the decoder tests.

A protocol's test names its seeds (well-formed PDUs), a :class:`Mutator` built from the generic
operators here plus its own (a function code, a tag octet, a count), and what must hold; :func:`run`
then feeds a seeded stream of mutated inputs through the decoder's ``probe``, ``split`` and
``safe_feed`` and checks that

- no exception escapes (``safe_feed`` turns the decode errors it expects into ``<proto>.malformed``,
  so every other exception fails the test, and so does any ``*.malformed`` anomaly: hostile bytes
  must get a named anomaly, not a caught exception);
- every anomaly carries the expected protocol prefix;
- the session's tables stay within their bounds after every input.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.decode import Decoder, Message, Session

Op = Callable[[random.Random, bytearray], None]
"""A mutation operator: changes ``buf`` in place, or leaves it when it is too short for it."""

# The draws here use ``rng._randbelow(n)``: the number ``rng.randrange(n)`` returns (the same
# stream) without its argument checks, which cost more than the draw; a fuzz test makes about a
# million of them.


def noise(rng: random.Random, most: int) -> bytes:
    """One to ``most`` random octets."""
    below = rng._randbelow
    return bytes(below(256) for _ in range(below(most) + 1))


def overwrite(rng: random.Random, buf: bytearray) -> None:
    """Any octet set to any value."""
    if buf:
        buf[rng._randbelow(len(buf))] = rng._randbelow(256)


def truncate(rng: random.Random, buf: bytearray) -> None:
    """Everything from a random offset on cut off."""
    if buf:
        del buf[rng._randbelow(len(buf)):]


def insert(most: int) -> Op:
    """Up to ``most`` random octets put in anywhere."""
    def op(rng: random.Random, buf: bytearray) -> None:
        at = rng._randbelow(len(buf) + 1)
        buf[at:at] = noise(rng, most)
    return op


def append(most: int) -> Op:
    """Up to ``most`` random octets put at the end."""
    def op(rng: random.Random, buf: bytearray) -> None:
        buf.extend(noise(rng, most))
    return op


def length_field(at: int, size: int, *, chance: float, less: int = 0,
                 order: Literal["big", "little"] = "big") -> Op:
    """With probability ``chance``, make the ``size``-octet length field at ``at`` agree with the
    buffer: its length less ``less`` (the header the field does not count), capped at the
    field's maximum. Without it most mutations would die at the framing check."""
    top = (1 << 8 * size) - 1
    need = max(at + size, less)

    def op(rng: random.Random, buf: bytearray) -> None:
        if len(buf) >= need and rng.random() < chance:
            buf[at:at + size] = min(len(buf) - less, top).to_bytes(size, order)
    return op


@dataclass(frozen=True)
class Mutator:
    """One to ``rounds`` operators drawn from ``ops`` applied to a copy of a seed, then ``fix``."""

    ops: Sequence[Op]
    fix: Op | None = None
    rounds: int = 4

    def __call__(self, rng: random.Random, seed: bytes) -> bytes:
        buf = bytearray(seed)
        ops, n = self.ops, len(self.ops)
        for _ in range(rng._randbelow(self.rounds) + 1):
            ops[rng._randbelow(n)](rng, buf)
        if self.fix is not None:
            self.fix(rng, buf)
        return bytes(buf)


def framed(decoder: Decoder, buf: bytes) -> list[bytes]:
    """``buf`` split as a TCP stream, holding ``split`` to its contract: complete PDUs that are
    exactly the bytes used, or none and -1 to resynchronise."""
    pdus, used = decoder.split(buf)
    assert used == -1 and pdus == [] or b"".join(pdus) == buf[:used], buf.hex()
    return pdus


def writable(msg: Message) -> bool:
    """The message's fields can be written out as a record (JSON without NaN), as the CLI does."""
    json.dumps(msg.fields, allow_nan=False)
    return True


Units = Callable[[random.Random, int, bytes], list[bytes]]
"""What the session is fed from input ``i``. By default, for a decoder that frames TCP streams,
the PDUs that ``buf`` frames into, or ``buf`` itself as one datagram when it frames into none;
for any other decoder ``buf`` as one datagram (or frame)."""


def _default_units(decoder: Decoder) -> Units:
    if decoder.tcp_ports:
        return lambda rng, i, buf: framed(decoder, buf) or [buf]
    return lambda rng, i, buf: [buf]


def run(decoder: Decoder, seeds: Sequence[bytes], mutate: Callable[[random.Random, bytes], bytes],
        *, seed: int, session: Callable[[], Session], n: int = 100_000, renew: int = 0,
        units: Units | None = None, from_client: bool | None = None, step: float = 0.0,
        prefixes: tuple[str, ...] | None = None, check: Callable[[Message], bool] | None = None,
        bounded: Callable[[Any], bool] | None = None) -> int:
    """Feed ``n`` inputs, each ``mutate`` of a seed drawn at random, and return how many messages
    came out.

    ``session`` makes the session, a fresh one every ``renew`` inputs when ``renew`` is set.
    ``from_client`` fixes the direction (random per PDU by default); packet time advances by
    ``step`` per input. Every anomaly must start with one of ``prefixes`` (by default the
    message's own protocol), ``check`` must hold for every message, and ``bounded`` for the
    session after every input.
    """
    units = units or _default_units(decoder)
    rng = random.Random(seed)
    messages = 0
    sess = session()
    start = time.perf_counter()
    for i in range(n):
        if renew and i and i % renew == 0:
            sess = session()
        buf = mutate(rng, rng.choice(seeds))
        decoder.probe(buf[:256])
        for pdu in units(rng, i, buf):
            fc = rng.random() < 0.5 if from_client is None else from_client
            for msg in decoder.safe_feed(sess, pdu, fc, i * step):
                messages += 1
                for a in msg.anomalies:
                    assert not a.endswith(".malformed"), f"{a}: the decoder raised on {pdu.hex()}"
                    assert a.startswith(prefixes or msg.proto + "."), (msg.proto, a, pdu.hex())
                assert check is None or check(msg), (msg, pdu.hex())
        assert bounded is None or bounded(sess), f"state past its bounds after {buf.hex()}"
    elapsed = time.perf_counter() - start
    # printed, not asserted: speed is scripts/bench's business (a loaded CI box is slow)
    print(f"{decoder.name} fuzz: {n} inputs, {messages} messages in {elapsed:.1f} s")
    return messages
