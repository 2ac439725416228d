"""The note heads (mt3ds/tokens/rolls.py, mt3ds/model/heads.py): targets built from tokens, rolls read back into
notes, instruments and drums, file-level instrument consistency, --instruments masking, and the frames reading
running without one decoder call."""
import numpy as np
import pytest
import torch

from mt3ds.config import FeatureConfig
from mt3ds.model.config import ModelConfig
from mt3ds.model.io import model_meta, save_model
from mt3ds.model.transcriber import Transcriber
from mt3ds.tokens.codec import encode_notes
from mt3ds.tokens.frames import LOWEST_PITCH, N_KEYS, frame_seconds
from mt3ds.tokens.notes import Notes
from mt3ds.tokens.rolls import (CLASSES, DRUM_CLASSES, GROUPS, N_CLASSES, N_DRUM_CLASSES, ClassEvidence,
                                ReadSettings, RollReader, Rows, choose_classes, class_of_program, head_targets,
                                onset_notes, read_heads)

FRAME = frame_seconds()
FRAMES = FeatureConfig().frames


def chunk_ids(notes: Notes):
    return encode_notes(notes, n_chunks=1, time_encoding="delta").chunks()[0]


def test_classes_cover_every_program_once_and_drum_keys_map_back():
    covered = [p for _, lo, hi in CLASSES for p in range(lo, hi + 1)]
    assert covered == list(range(128))
    assert class_of_program(0) == 0 and class_of_program(33) == 4 and class_of_program(48) == 5  # ensemble: strings
    keys = [k for _, _, ks in DRUM_CLASSES for k in ks]
    assert len(keys) == len(set(keys))  # a drum key belongs to one class
    assert all(key in ks or not ks for _, key, ks in DRUM_CLASSES)  # the key written back is one of the class's


def test_targets_put_every_note_on_its_class_key_and_frame():
    truth = Notes([0.1, 0.5, 1.2, 0.3, 0.7, 0.7], [0.4, 1.5, 2.048, 0.31, 0.71, 0.71], [60, 40, 100, 36, 46, 42],
                  [80] * 6, [0, 33, 73, 128, 128, 128])
    t = head_targets(chunk_ids(truth))
    assert t["onset"].shape == t["frame"].shape == t["offset"].shape == (FRAMES, GROUPS, N_KEYS)
    assert t["drums"].shape == (FRAMES, N_DRUM_CLASSES) and t["programs"].shape == (FRAMES, 128)
    for onset, offset, pitch, program in [(0.1, 0.4, 60, 0), (0.5, 1.5, 40, 33), (1.2, None, 100, 73)]:
        group, key, first = 1 + class_of_program(program), pitch - LOWEST_PITCH, int(onset / FRAME)
        assert t["onset"][first, 0, key] == t["onset"][first, group, key] == 1
        assert t["onset"][:, group, key].sum() == 1 and t["onset"][:, :, key].sum() == 2  # group 0 and its class
        assert t["frame"][first, group, key] and t["programs"][first, program]
        if offset is None:  # still sounding at the chunk's end: no offset in this chunk
            assert t["offset"][:, group, key].sum() == 0 and t["frame"][-1, group, key] == 1
        else:
            assert t["offset"][int(offset / FRAME), group, key] == 1
            assert t["frame"][int(offset / FRAME) + 1:, group, key].sum() == 0
    # drums: kick (36), open hi-hat (46) and closed hi-hat (42) on their classes, none on the pitched rolls
    names = [n for n, _, _ in DRUM_CLASSES]
    assert t["drums"][int(0.3 / FRAME), names.index("kick")] == 1
    assert t["drums"][int(0.7 / FRAME), names.index("hihat_open")] == 1
    assert t["drums"][int(0.7 / FRAME), names.index("hihat_closed")] == 1
    assert t["drums"].sum() == 3 and t["onset"].sum() == 6  # 3 pitched notes x (group 0 + class)
    # a tied note has no onset in this chunk, but sounds from its first frame
    tied = encode_notes(Notes([1.5], [2.5], [64], [80], [0]), n_chunks=2, time_encoding="delta").chunks()[1]
    t2 = head_targets(tied)
    assert t2["onset"].sum() == 0 and t2["frame"][0, 0, 64 - LOWEST_PITCH] == 1


def test_reading_known_rolls_gives_the_known_notes():
    """Targets as probabilities read back: pitches, classes' programs, onsets within a frame, drums on GM keys."""
    truth = Notes([0.1, 0.5, 1.2, 0.3, 0.9], [0.4, 1.5, 1.3, 0.31, 0.91], [60, 40, 100, 36, 38], [80] * 5,
                  [0, 33, 73, 128, 128])
    t = head_targets(chunk_ids(truth))
    reader = RollReader()
    reader.add({k: v[None].astype(np.float32) for k, v in t.items()})
    notes = read_heads(reader.rolls(), FRAME, ReadSettings(min_track_notes=0))
    order = np.argsort(truth.onset)
    assert notes.pitch.tolist() == truth.pitch[order].tolist()
    assert notes.program.tolist() == truth.program[order].tolist()
    np.testing.assert_allclose(notes.onset, truth.onset[order], atol=FRAME)
    pitched = ~notes.is_drum
    np.testing.assert_allclose(notes.offset[pitched], truth.offset[order][pitched], atol=FRAME)


def test_peak_picking_merges_restrikes_and_refines_onsets():
    onset, frame, offset = (np.zeros((100, N_KEYS), np.float32) for _ in range(3))
    key = 60 - LOWEST_PITCH
    onset[10:13, key] = [0.6, 0.9, 0.8]  # peak at 11, leaning late: the refined onset is after its centre
    onset[14, key] = 0.7  # a second peak 3 frames (24 ms) later: the same note re-struck by the head
    onset[40, key] = 0.95  # a real second note
    frame[10:60, key] = 0.9
    notes, _, _ = onset_notes(onset, frame, offset, FRAME, ReadSettings(min_gap_s=0.05, onset_threshold=0.5))
    assert len(notes) == 2 and notes.onset[0] > 11.5 * FRAME and notes.onset[0] < 12 * FRAME
    assert notes.offset[0] == pytest.approx(40 * FRAME)  # ends at the next onset of its key
    no_gap, _, _ = onset_notes(onset, frame, offset, FRAME, ReadSettings(min_gap_s=0.0, onset_threshold=0.5))
    assert len(no_gap) == 3
    shifted, _, _ = onset_notes(onset, frame, offset, FRAME, ReadSettings(min_gap_s=0.05, onset_shift_s=0.02))
    np.testing.assert_allclose(shifted.onset, notes.onset + 0.02)
    offset[30, key] = 0.9  # an offset peak ends the first note early
    ended, _, _ = onset_notes(onset, frame, offset, FRAME, ReadSettings(min_gap_s=0.05))
    assert ended.offset[0] == pytest.approx(30 * FRAME)


def test_an_instrument_whose_class_flickers_between_chunks_stays_one_track():
    """One instrument over 20 chunks: its class evidence favours strings in 12 chunks and brass in 8, narrowly.
    Read note by note it would be two tracks; over the whole file it is one."""
    rng = np.random.default_rng(0)
    strings, brass = class_of_program(40), class_of_program(56)
    evidence = np.full((200, N_CLASSES), 0.02, np.float32)
    for i in range(200):
        favoured, other = (strings, brass) if (i // 10) % 5 < 3 else (brass, strings)
        evidence[i, favoured] = 0.55 + 0.05 * rng.random()
        evidence[i, other] = 0.45 + 0.05 * rng.random()
    local = np.argmax(evidence, 1)
    assert len(set(local.tolist())) == 2
    assert set(choose_classes(evidence, ReadSettings()).tolist()) == {strings}
    # beside a second instrument whose evidence is clear (piano), the flickering one still ends on one track
    piano = class_of_program(0)
    both = np.concatenate([evidence, np.full((150, N_CLASSES), 0.02, np.float32)])
    both[200:, piano] = 0.9
    assert set(choose_classes(both, ReadSettings()).tolist()) == {strings, piano}
    # a class left with a handful of notes gives them to their next best class
    evidence[:3, class_of_program(0)] = 0.99
    assert class_of_program(0) not in choose_classes(evidence, ReadSettings(min_track_notes=6))


def test_file_level_programs_make_one_track_per_class():
    """Program votes accumulate over the file: a guitar class whose frames vote 27 more than 29 is all 27."""
    n = 50
    probs = {"onset": np.zeros((1, n, GROUPS, N_KEYS), np.float32), "frame": np.zeros((1, n, GROUPS, N_KEYS),
                                                                                      np.float32),
             "offset": np.zeros((1, n, GROUPS, N_KEYS), np.float32), "drums": np.zeros((1, n, N_DRUM_CLASSES)),
             "programs": np.zeros((1, n, 128), np.float32)}
    guitar = 1 + class_of_program(27)
    for i, t in enumerate(range(2, 48, 6)):
        key = 20 + i
        probs["onset"][0, t, [0, guitar], key] = 0.9
        probs["frame"][0, t:t + 4, [0, guitar], key] = 0.9
        probs["programs"][0, t:t + 4, 27 if i % 3 else 29] = 0.8  # 29 (overdriven) in a third of the frames
    reader = RollReader()
    reader.add(probs)
    notes = read_heads(reader.rolls(), FRAME, ReadSettings(min_track_notes=0))
    assert len(notes) == 8 and set(notes.program.tolist()) == {27}
    # --instruments naming program 29 picks it within the class; naming only drums masks every pitched note
    assert set(read_heads(reader.rolls(), FRAME, ReadSettings(min_track_notes=0), [29, 128]).program.tolist()) \
        == {29}
    assert len(read_heads(reader.rolls(), FRAME, ReadSettings(min_track_notes=0), [128])) == 0


def test_hint_masks_classes_and_drums():
    evidence = np.zeros((4, N_CLASSES), np.float32)
    evidence[:, class_of_program(0)] = 0.9  # the notes look like piano
    evidence[:, class_of_program(40)] = 0.3
    allowed = np.zeros(N_CLASSES, bool)
    allowed[class_of_program(40)] = True  # the user says: strings only
    assert set(choose_classes(evidence, ReadSettings(min_track_notes=0), allowed).tolist()) == {class_of_program(40)}
    drums = np.zeros((1, 20, N_DRUM_CLASSES), np.float32)
    drums[0, 5, 0] = 0.9
    probs = {"onset": np.zeros((1, 20, GROUPS, N_KEYS)), "frame": np.zeros((1, 20, GROUPS, N_KEYS)),
             "offset": np.zeros((1, 20, GROUPS, N_KEYS)), "drums": drums, "programs": np.zeros((1, 20, 128))}
    reader = RollReader()
    reader.add(probs)
    assert len(read_heads(reader.rolls(), FRAME)) == 1  # the kick
    assert len(read_heads(reader.rolls(), FRAME, programs=[0])) == 0  # no drums listed: none written


def test_rows_preallocated_or_grown_hold_what_was_appended():
    parts = [np.random.default_rng(i).random((n, 3)).astype(np.float16) for i, n in enumerate((700, 1, 900, 0, 5))]
    for capacity in (0, 1606, 10):  # grown from nothing, exact, too small
        rows = Rows((3,), np.float16, capacity)
        for part in parts:
            rows.append(part)
        assert rows.n == 1606 and np.array_equal(rows.array(), np.concatenate(parts))
    assert Rows((0,), np.uint8).array().shape == (0, 0)


def test_roll_reader_with_the_frame_count_reads_the_same_notes():
    rng = np.random.default_rng(4)
    batches = [{"onset": rng.random((2, 20, 1, N_KEYS)) ** 8, "frame": rng.random((2, 20, GROUPS, N_KEYS)) ** 2,
                "offset": rng.random((2, 20, 1, N_KEYS)) ** 8, "drums": rng.random((2, 20, N_DRUM_CLASSES)) ** 8,
                "programs": rng.random((2, 20, 128))} for _ in range(3)]
    readers = [RollReader(keep_programs=True), RollReader(keep_programs=True, frames=120)]
    for reader in readers:
        for b in batches:
            reader.add(b)
    a, b = (reader.rolls() for reader in readers)
    for name in ("onset", "frame", "offset", "drums", "hinted_probs"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    settings = ReadSettings(program_split=0.5)
    na, nb = read_heads(a, FRAME, settings), read_heads(b, FRAME, settings)
    assert len(na) > 0 and all(np.array_equal(getattr(na, f), getattr(nb, f))
                               for f in ("onset", "offset", "pitch", "program"))


def test_class_evidence_keeps_only_sounding_cells_and_averages_over_a_note():
    ev = ClassEvidence(floor=0.2)
    any_frame = np.zeros((10, N_KEYS), np.float32)
    classes = np.zeros((10, N_CLASSES, N_KEYS), np.float32)
    any_frame[2:6, 5] = 0.9
    classes[2:6, 3, 5] = [1.0, 1.0, 0.0, 0.0]
    ev.add(any_frame[:5], classes[:5])
    ev.add(any_frame[5:], classes[5:])  # chunks arrive in order
    per_note = ev.per_note(np.array([2]), np.array([6]), np.array([5]))
    assert per_note.shape == (1, N_CLASSES) and per_note[0, 3] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1])
def test_read_settings_refuse_thresholds_out_of_range(value):
    with pytest.raises(ValueError, match="between 0 and 1"):
        ReadSettings(onset_threshold=value)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ReadSettings(drum_threshold=value)


@pytest.mark.parametrize("front_end,time_pool", [("linear", 1), ("conv", 1), ("linear", 2)])
def test_heads_loss_trains_without_the_decoder(front_end, time_pool):
    """token_weight 0: the loss never runs the decoder; heads' logits come at the full frame rate."""
    from mt3ds.data.loader import collate

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", note_heads=True, token_weight=0.0, front_end=front_end, time_pool=time_pool)
    model = Transcriber(cfg)
    ids = chunk_ids(Notes([0.1, 0.3], [0.5, 0.31], [60, 36], [80, 80], [0, 128]))
    batch = collate([{"tokens": ids, "audio": np.zeros(32768, np.float32), "key": "k", "meta": {"programs": [0]}}] * 2,
                    note_heads=True)
    called = []
    model.decode = lambda *a, **k: called.append(1)
    loss, metrics = model.loss(torch.randn(2, FRAMES, 512), batch)
    loss.backward()
    assert not called and "token_loss" not in metrics and metrics["heads_loss"] > 0
    assert model.note_heads.proj.weight.grad is not None
    model.eval()
    memory = model.encode(torch.randn(1, FRAMES, 512))
    probs = model.head_probs(memory, FRAMES)  # only what the reading uses: group 0 of onset and offset
    assert probs["onset"].shape == probs["offset"].shape == (1, FRAMES, 1, N_KEYS)
    assert probs["frame"].shape == (1, FRAMES, GROUPS, N_KEYS) and probs["drums"].shape == (1, FRAMES, 9)
    full = model.note_heads(memory, FRAMES)
    for name in ("onset", "offset"):
        torch.testing.assert_close(probs[name], torch.sigmoid(full[name][:, :, :1]))
    for name in ("frame", "drums", "programs"):
        torch.testing.assert_close(probs[name], torch.sigmoid(full[name]))


def test_frames_reading_never_calls_the_decoder(tmp_path, monkeypatch):
    from mt3ds.model import generate as generate_module
    from mt3ds.transcribe import Pipeline

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", note_heads=True, conditioning="encoder_film")
    path = tmp_path / "heads.safetensors"
    save_model(Transcriber(cfg).state_dict(), path, model_meta(cfg))
    pipeline = Pipeline(path, "cpu")
    assert pipeline.notes_source(None) == "frames"

    def forbidden(*a, **k):
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(pipeline.model, "decode", forbidden)
    monkeypatch.setattr(generate_module, "generate", forbidden)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    notes, chunks = pipeline.transcribe_audio(audio, "x", programs=[0, 128])
    assert chunks == 0 or chunks == 2  # frames reports no token chunks
    assert set(notes.program.tolist()) <= {0, 128}


def test_bench_reading_chooses_settings_no_worse_than_the_models(tmp_path):
    from dataset_fixtures import make_slakh_track

    from mt3ds.bench.quality import load_tracks
    from mt3ds.bench.reading import bench_reading
    from mt3ds.cli import main

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", note_heads=True)
    path = tmp_path / "heads.safetensors"
    save_model(Transcriber(cfg).state_dict(), path, model_meta(cfg))
    make_slakh_track(tmp_path / "slakh" / "validation" / "Track00001", [{"program": 0, "seed": 1}], 2.5, seed=1)
    tracks = [t[:3] for t in load_tracks("slakh", tmp_path / "slakh", "validation")]
    fig = bench_reading(path, tracks, passes=1)
    assert fig["tracks"] == 1 and ReadSettings.from_dict(fig["reading"])  # valid settings
    for metric in ("onset", "onset_offset", "drum_onset"):
        assert fig["after"][metric] >= fig["before"][metric]
    with pytest.raises(SystemExit) as exit_info:  # settings are never chosen on test data
        main(["bench", "reading", "--model", str(path), "--dataset", "slakh", "--root", str(tmp_path / "slakh"),
              "--split", "test"])
    assert exit_info.value.code == 2


def test_note_heads_start_from_a_trained_aux_frame_head():
    from mt3ds.model.heads import from_frame_head

    torch.manual_seed(0)
    old = Transcriber(ModelConfig.preset("tiny", aux_frame_loss=True)).eval()
    new = Transcriber(ModelConfig.preset("tiny", note_heads=True, time_pool=2)).eval()
    state = {k: v for k, v in old.state_dict().items() if k in new.state_dict()}
    state["note_heads.proj.weight"], state["note_heads.proj.bias"] = from_frame_head(
        old.frame_head.weight, old.frame_head.bias, new.note_heads)
    new.load_state_dict(state, strict=False)
    memory = torch.randn(1, 8, 64)  # the same memory frame for both sub-frames of the pooled model
    old_probs = torch.sigmoid(old._roll_logits(memory.repeat_interleave(2, 1)))
    full = new.note_heads(memory, 16)
    for g in (0, 5):
        torch.testing.assert_close(torch.sigmoid(full["onset"][:, :, g]), old_probs[:, :, 0])
        torch.testing.assert_close(torch.sigmoid(full["frame"][:, :, g]), old_probs[:, :, 1])


def test_two_listed_programs_of_one_class_split_its_notes():
    """--instruments violin,cello (both strings): each strings note takes the listed program its frames favour,
    instead of all collapsing onto one."""
    n = 40
    probs = {"onset": np.zeros((1, n, 1, N_KEYS), np.float32), "frame": np.zeros((1, n, GROUPS, N_KEYS), np.float32),
             "offset": np.zeros((1, n, 1, N_KEYS), np.float32), "drums": np.zeros((1, n, N_DRUM_CLASSES)),
             "programs": np.zeros((1, n, 128), np.float32)}
    strings = 1 + class_of_program(40)
    for t, key, program in ((2, 50, 40), (12, 30, 42), (22, 52, 40), (32, 28, 42)):
        probs["onset"][0, t, 0, key] = 0.9
        probs["frame"][0, t:t + 5, [0, strings], key] = 0.9
        probs["programs"][0, t:t + 5, program] = 0.8
        probs["programs"][0, t:t + 5, 82 - program] = 0.3  # the other one, weaker
    reader = RollReader([40, 42])
    reader.add(probs)
    notes = read_heads(reader.rolls(), FRAME, ReadSettings(min_track_notes=0), [40, 42])
    assert notes.program.tolist() == [40, 42, 40, 42]
    unhinted = RollReader()
    unhinted.add(probs)
    assert len(set(read_heads(unhinted.rolls(), FRAME, ReadSettings(min_track_notes=0)).program.tolist())) == 1


def test_program_split_keeps_two_programs_of_one_class_without_a_list():
    """Two guitars (clean 27, overdriven 30) with no --instruments list: program_split keeps both as tracks, each
    note on the one its frames favour; without it, or when one would be a track too small, the class is one track."""
    n = 80
    probs = {"onset": np.zeros((1, n, 1, N_KEYS), np.float32), "frame": np.zeros((1, n, GROUPS, N_KEYS), np.float32),
             "offset": np.zeros((1, n, 1, N_KEYS), np.float32), "drums": np.zeros((1, n, N_DRUM_CLASSES)),
             "programs": np.zeros((1, n, 128), np.float32)}
    guitar = 1 + class_of_program(27)
    played = [(2 + 8 * i, 40 + i, 27 if i % 3 else 30) for i in range(9)]
    for t, key, program in played:
        probs["onset"][0, t, 0, key] = 0.9
        probs["frame"][0, t:t + 5, [0, guitar], key] = 0.9
        probs["programs"][0, t:t + 5, program] = 0.8
        probs["programs"][0, t:t + 5, 57 - program] = 0.2  # the other guitar, weaker
        probs["programs"][0, t:t + 5, 24] = 0.05  # a third guitar, far below the split share
    reader = RollReader(keep_programs=True)
    reader.add(probs)
    rolls = reader.rolls()
    assert rolls.hinted_probs.dtype == np.uint8 and rolls.hinted_probs.shape == (n, 128)
    split = read_heads(rolls, FRAME, ReadSettings(min_track_notes=0, program_split=0.3))
    assert split.program.tolist() == [p for _, _, p in played]
    assert set(read_heads(rolls, FRAME, ReadSettings(min_track_notes=0)).program.tolist()) == {27}
    assert set(read_heads(rolls, FRAME, ReadSettings(min_track_notes=4, program_split=0.3)).program.tolist()) == {27}
    plain = RollReader()
    plain.add(probs)
    assert plain.rolls().hinted_probs is None  # nothing kept per frame unless asked
    with pytest.raises(ValueError, match="program_split"):
        ReadSettings(program_split=1.5)


def test_quantized_cpu_inference_runs_quietly(tmp_path, capsys):
    import soundfile as sf

    from mt3ds.cli import main

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", note_heads=True)
    path = tmp_path / "heads.safetensors"
    save_model(Transcriber(cfg).state_dict(), path, model_meta(cfg))
    src = tmp_path / "a.wav"
    sf.write(src, np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)
    main(["transcribe", str(src), "-o", str(tmp_path / "a.mid"), "--model", str(path), "--quantize", "--quiet",
          "--device", "cpu"])
    err = capsys.readouterr().err
    assert (tmp_path / "a.mid").is_file() and "Warning" not in err, err


def test_half_matches_numpy_float16():
    """The reader's float16 conversion (through torch, for speed) gives numpy's values, on strided slices too."""
    from mt3ds.tokens.rolls import _half

    x = np.random.default_rng(0).random((300, 13, N_KEYS), dtype=np.float32) ** 3
    x[0, 0, :4] = [0.0, 1.0, 6.1e-5, 0.99951171875]  # zero, one, float16's subnormal edge, a rounding tie
    for part in (x[:, 0], x[:, 5], x.reshape(300, -1)):
        half = _half(part)
        assert half.dtype == np.float16 and np.array_equal(half, part.astype(np.float16))
