"""Baseline rules narrowed to function families: writes out of range, and link keep-alives."""
from __future__ import annotations

import struct

from edge_agent.features.extract import load_families
from tests.detect.test_rules import learn, rules_of, run
from tests.plant import ModbusConversation, frame, ip, polling


def by_rule(findings) -> dict[str, dict]:
    return {f["rule"]: f for f in findings}


def test_a_write_out_of_range_is_high_and_a_read_out_of_range_medium() -> None:
    base = learn(polling(ModbusConversation(1, 2), 0.0, 300, write_every=10))   # writes: 10
    assert base.channels[("10.0.0.1", "10.0.0.2", "modbus")]["ranges"]["write"] == [10, 10]
    conv = ModbusConversation(1, 2, cport=40001)
    findings, _ = run(conv.read(400.0) + conv.write(401.0, addr=100, value=7), base)
    f = by_rule(findings)
    assert set(f) == {"write_out_of_range"}
    assert (f["write_out_of_range"]["severity"], f["write_out_of_range"]["attack_technique"]) \
        == ("high", "T0836")
    assert f["write_out_of_range"]["detail"] == "modbus write address 100 outside 10..10"
    findings, _ = run(conv.read(500.0, addr=5000), base)
    f = by_rule(findings)
    assert set(f) == {"address_out_of_range"} and f["address_out_of_range"]["severity"] == "medium"
    # Each retunes alone.
    findings, _ = run(conv.write(600.0, addr=100), base, disabled=["address_out_of_range"])
    assert rules_of(findings) == {"write_out_of_range"}


class Iec104:
    """A controlling station (10.0.0.1) and an RTU (10.0.0.4) on one IEC-104 connection."""

    def __init__(self, cport: int) -> None:
        self.cport, self.cseq, self.sseq = cport, 1, 1
        self.tx = [0, 0]           # N(S) of the client, of the RTU

    def _send(self, ts: float, apdu: bytes, from_client: bool) -> tuple:
        if from_client:
            f = frame(ip(1), self.cport, ip(4), 2404, apdu, self.cseq)
            self.cseq += len(apdu)
        else:
            f = frame(ip(4), 2404, ip(1), self.cport, apdu, self.sseq)
            self.sseq += len(apdu)
        return ts, 1, f

    def u(self, ts: float, act: int) -> list:
        """An U-format exchange: act (STARTDT 0x07, TESTFR 0x43) and its confirmation."""
        return [self._send(ts, bytes([0x68, 4, act, 0, 0, 0]), True),
                self._send(ts + 0.01, bytes([0x68, 4, (act & 0xFC) << 1 | 3, 0, 0, 0]), False)]

    def _i(self, ts: float, asdu: bytes, from_client: bool) -> tuple:
        d = 0 if from_client else 1
        ctl = struct.pack("<HH", self.tx[d] << 1, self.tx[1 - d] << 1)
        self.tx[d] += 1
        return self._send(ts, bytes([0x68, 4 + len(asdu)]) + ctl + asdu, from_client)

    def command(self, ts: float, type_id: int, tail: bytes) -> list:
        """A command (cause: activation) to common address 1 and its confirmation."""
        head = lambda cot: bytes([type_id, 1, cot, 0, 1, 0, 0, 0, 0])
        return [self._i(ts, head(6) + tail, True), self._i(ts + 0.01, head(7) + tail, False)]


def test_new_function_leaves_out_keep_alives() -> None:
    fam = load_families()
    assert fam[("iec104", "testfr_act")] == fam[("iec104", "testfr_con")] == "session"
    learning = Iec104(40000)
    packets = learning.u(0.0, 0x07)
    for t in range(1, 300, 10):                       # general interrogation every 10 s
        packets += learning.command(float(t), 100, b"\x14")
    base = learn(packets)
    assert "testfr_act" not in base.channels[("10.0.0.1", "10.0.0.4", "iec104")]["funcs"]
    # The line goes idle: TESTFR keep-alives; then a single command nobody sent before.
    later = Iec104(40001)
    packets = later.u(400.0, 0x07) + later.u(420.0, 0x43) + later.u(440.0, 0x43)
    packets += later.command(450.0, 100, b"\x14")
    findings, _ = run(packets, base)
    assert findings == []
    findings, _ = run(packets + later.command(460.0, 45, b"\x01"), base)
    news = [f for f in findings if f["rule"] == "new_function"]
    assert [f["detail"] for f in news] == ["iec104 c_sc_na_1"]
