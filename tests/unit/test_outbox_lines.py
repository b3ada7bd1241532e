"""Outbox lines of format version 2 (packed rows) read back exactly; version-1 lines still replay."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.writer_support import closed_turn
from turnledger.store.entries import CALL_COLUMNS, USAGE_COLUMNS, dumps_document, make_entry
from turnledger.store.lines import encode_line, unpack_entry
from turnledger.store.outbox import CorruptLine, decode_line, encode_entry, frame_line
from turnledger.store.record import turn_rows
from turnledger.store.replay import ReplayReport, load_segment


class _Name(str):
    pass


def _entry(turn_id: str = "t1") -> dict[str, Any]:
    return make_entry(turn_rows(closed_turn(turn_id), usage_type="chat"))


def _read(line: bytes) -> Any:
    return unpack_entry(decode_line(line))


def test_a_packed_line_reads_back_as_the_same_entry() -> None:
    entry = _entry()
    line = encode_line(entry)
    body = json.loads(line)["entry"]
    assert body["v"] == 2
    usage = dict(zip(USAGE_COLUMNS, body["usage"], strict=True))
    # Money and times as text in their columns; JSON documents embedded as JSON, not as escaped strings.
    assert usage["cost_usd"] == "0.0000405"
    assert usage["created_at"] == entry["usage"]["created_at"].isoformat()
    assert usage["tags"] == ["bench"]
    assert usage["call_details"][0]["cost_usd"] == "0.0000135"
    back = _read(line)
    assert back == entry
    assert back["usage"]["cost_usd"] == Decimal("0.0000405")
    assert back["usage"]["call_details"] == entry["usage"]["call_details"]
    assert len(line) < len(encode_entry(entry))


def test_version_1_lines_still_read() -> None:
    entry = _entry()
    assert _read(encode_entry(entry)) == entry


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: e["usage"].__setitem__("cost_usd", 0.5), id="float money"),
        pytest.param(lambda e: e["calls"][0].__setitem__("extra", 1), id="extra column"),
        pytest.param(lambda e: e["calls"][0].pop("model"), id="missing column"),
        pytest.param(lambda e: e["usage"].__setitem__("tags", '[{"$dec":"1"}]'), id="tag-like key in a document"),
        # What the fast JSON encoder would write differently from the standard one, or not at all.
        pytest.param(lambda e: e["usage"].__setitem__("prompt_tokens", 2**70), id="int beyond 64 bits"),
        pytest.param(lambda e: e["calls"][0].__setitem__("model", _Name("gpt-4o")), id="str subclass"),
    ],
)
def test_what_does_not_pack_exactly_is_written_as_version_1(change: Any) -> None:
    entry = _entry()
    change(entry)
    line = encode_line(entry)
    assert json.loads(line)["entry"]["v"] == 1
    assert _read(line) == entry


def test_odd_strings_pack_and_read_back_exactly() -> None:
    entry = _entry('t-\x00-ünï-\u2028-"quoted"-\\')
    entry["usage"]["tags"] = dumps_document(["\x00", "ü", "\ud7ff"])
    line = encode_line(entry)
    assert json.loads(line)["entry"]["v"] == 2
    assert _read(line) == entry


def test_a_damaged_packed_line_is_caught_by_its_checksum() -> None:
    line = encode_line(_entry())
    with pytest.raises(CorruptLine):
        decode_line(line.replace(b"0.0000405", b"0.0000406"))


def _reframed(line: bytes, edit: Any) -> bytes:
    body = json.loads(line)["entry"]
    edit(body)
    return frame_line(json.dumps(body, separators=(",", ":")).encode())


def test_packed_lines_for_other_columns_or_malformed_are_set_aside(tmp_path: Path) -> None:
    originals = [_entry(f"g{i}") for i in range(3)]
    v1 = _entry("v1")
    good = [encode_line(e) for e in originals]
    other_columns = _reframed(good[0], lambda b: b.__setitem__("cols", "00000000"))
    short_row = _reframed(good[0], lambda b: b["usage"].pop())
    bad_money = _reframed(good[0], lambda b: b["calls"][0].__setitem__(CALL_COLUMNS.index("cost_usd"), 5))
    segment = tmp_path / "w.000001.jsonl"
    segment.write_bytes(
        b"".join([good[0], other_columns, encode_entry(v1), short_row, good[1], bad_money, good[2][:-40]])
    )
    report = ReplayReport()
    entries = load_segment(segment, report)
    assert entries == [originals[0], v1, originals[1]]
    assert len(report.bad_lines) == 4
    # Set aside with their content, for a person to read: checksummed lines that decode again.
    kept = segment.with_name(segment.name + ".rejected").read_bytes().splitlines(keepends=True)
    assert [decode_line(line)["cols"] for line in kept[:3]] == ["00000000", *[json.loads(good[0])["entry"]["cols"]] * 2]
    assert kept[3] == good[2][:-40] + b"\n"


OLD_OUTBOX = Path(__file__).parent.parent / "fixtures" / "outbox_before_0004.jsonl"
"""A packed line and a version-1 line as the version before migration 0004 wrote them (no audio columns)."""


def test_lines_written_before_the_audio_columns_read_with_no_audio_tokens(tmp_path: Path) -> None:
    packed, plain = OLD_OUTBOX.read_bytes().splitlines(keepends=True)
    assert json.loads(packed)["entry"]["cols"] != json.loads(encode_line(_entry()))["entry"]["cols"]
    for line, turn_id in ((packed, "old-packed"), (plain, "old-v1")):
        entry = _read(line)
        assert entry["turn_id"] == turn_id and entry["usage"]["cost_usd"] == Decimal("0.0000135")
        [call] = entry["calls"]
        assert set(call) == set(CALL_COLUMNS) and set(entry["usage"]) == set(USAGE_COLUMNS)
        assert (call["prompt_tokens"], call["audio_input_tokens"], call["audio_output_tokens"]) == (10, 0, 0)
        # Read as an entry of this version is: it packs again, and reads back the same.
        assert json.loads(encode_line(entry))["entry"]["v"] == 2
        assert _read(encode_line(entry)) == entry
    segment = tmp_path / "old.000001.jsonl"
    segment.write_bytes(packed + plain)
    report = ReplayReport()
    assert [e["turn_id"] for e in load_segment(segment, report)] == ["old-packed", "old-v1"]
    assert report.bad_lines == []


def test_audio_tokens_pack_and_read_back() -> None:
    entry = _entry()
    entry["calls"][0].update(audio_input_tokens=800, audio_output_tokens=400)
    line = encode_line(entry)
    assert json.loads(line)["entry"]["v"] == 2
    assert _read(line) == entry
    assert _read(encode_entry(entry)) == entry
