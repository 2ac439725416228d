"""The Option 1 vocabulary: literal ids pinned so any layout change fails loudly."""
import pytest

from mt3ds.tokens import gm, vocab as V


def test_literal_ids():
    assert (V.PAD, V.EOS, V.UNK) == (0, 1, 2)
    assert V.VOCAB_SIZE == 1437
    assert [V.encode_event("shift", k) for k in (0, 1, 50, 1000)] == [3, 4, 53, 1003]
    assert [V.encode_event("pitch", p) for p in (21, 60, 108)] == [1004, 1043, 1091]
    assert [V.encode_event("velocity", v) for v in (0, 100, 110, 127)] == [1092, 1192, 1202, 1219]
    assert V.encode_event("tie") == 1220 == V.TIE_ID
    assert [V.encode_event("program", p) for p in (0, 33, 127)] == [1221, 1254, 1348]
    assert [V.encode_event("drum", d) for d in (21, 36, 38, 108)] == [1349, 1364, 1366, 1436]
    assert V.encode_event("EOS") == 1


def test_ranges_tile_the_vocabulary():
    ids = [V.PAD, V.EOS, V.UNK]
    for r in V.RANGES.values():
        ids += list(range(r.first_id, r.last_id + 1))
    assert ids == list(range(V.VOCAB_SIZE))


@pytest.mark.parametrize("token", [0, 1, 2, 3, 53, 1003, 1004, 1091, 1092, 1219, 1220, 1221, 1348, 1349, 1436])
def test_decode_inverts_encode(token):
    type, value = V.decode_event(token)
    assert V.encode_event(type, value) == token


def test_out_of_range_values_and_ids_raise():
    with pytest.raises(ValueError):
        V.encode_event("pitch", 20)
    with pytest.raises(ValueError):
        V.encode_event("shift", 1001)
    with pytest.raises(ValueError):
        V.decode_event(1437)
    with pytest.raises(ValueError):
        V.encode_event("chord", 1)


def test_event_names_and_description():
    assert [V.event_name(t) for t in (1221, 1192, 1043, 53, 1220, 1364, 1)] == [
        "program 0", "velocity 100", "pitch 60", "shift 50", "tie", "drum 36", "EOS"]
    d = V.describe()
    assert d["total_size"] == 1437 and d["version"] == V.VOCAB_VERSION
    assert {"type": "drum", "min_id": 1349, "max_id": 1436} in d["cumulative_vocabulary"]


def test_general_midi_names_and_instrument_parsing():
    assert gm.program_name(0) == "Acoustic Grand Piano" and gm.program_name(128) == "Drums"
    assert gm.program_class(33) == "Bass" and gm.class_program(39) == 32
    assert [gm.parse_instrument(s) for s in ("piano", "Bass", "drums", "33", "Acoustic Bass", "violin")] == [
        0, 32, 128, 33, 32, 40]
    with pytest.raises(ValueError, match="accepted|use a program"):
        gm.parse_instrument("kazoo")
