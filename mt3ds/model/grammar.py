"""Grammar-constrained decoding: the parser state of a batch of chunk sequences, and the tokens it may take next.

The grammar of one chunk (docs/design.md §3.4, §3.9), in either time encoding:

    [tie (program p, pitch n)+]  ( [shift+] (program p, velocity v, pitch n | velocity v>0, drum n)+ )*  EOS

- The tie section comes first or not at all, its pairs strictly increasing in (p, n), drums never in it.
- Inside a step the key (group, p, n) strictly increases, group note-off 0 < note-on 1 < drum 2 (a drum's p is 0):
  note-offs by (p, n), then note-ons by (p, n), then drum hits by n. A shift opens a new step and resets the key.
- absolute: one `shift k` per new step, k strictly increasing, 1..max_step. delta: one or more `shift d` (d >= 1)
  per new step, their running sum at most max_step.
- EOS only between whole items (at the start, after a tie pair, after a note or drum hit); never after `tie` or a
  shift (the codec never writes a shift with no event after it); PAD and UNK never.

A token is allowed only if some valid continuation exists after it (the check compares the largest key the item
could still reach with the last key), so a row never has every token masked: at a boundary EOS is always allowed,
and inside an item its largest completion (pitch 108, drum 108) is. When the key space of a step is used up (a drum
108 was written) only a shift or EOS remains.

close(rows) asks rows to end (generate.py's runaway guard): a closing row writes no tie, shift or new item at a
boundary, so it finishes the item it is inside (at most 3 tokens: program, velocity, pitch after a shift; a delta
shift takes no second shift) and then can only write EOS. What it wrote is kept and still parses.

    grammar = TokenGrammar(batch, device, "absolute", allowed=instruments)
    token = grammar.mask(logits).argmax(-1)   # -inf on every token that would make a sequence malformed
    grammar.advance(token)
    grammar.select(keep)                       # drop or reorder sequences, as Stepper.select does (generate.py)
    grammar.close(rows)                        # those rows finish their item, then EOS

Every state is a tensor over the batch: one step costs a few [B, vocab] comparisons, no loop over sequences.
"""
from __future__ import annotations

import torch

from ..config import AudioConfig
from ..tokens import vocab

# The last step of a chunk: events sit at round((t - k*L) * 100) <= round(L * 100), and a note-off that lands on
# its own note-on's step moves one step later, so a note struck on the last step ends one step after it (the codec
# writes `shift 206` then: tests/test_grammar.py pins it).
CHUNK_STEPS = round(AudioConfig().chunk_seconds * vocab.STEPS_PER_SECOND)  # 205 for 2.048 s
MAX_STEP = CHUNK_STEPS + 1

# Parser phases: where a sequence stands after its last token.
START = 0  # nothing written yet
TIE_OPEN = 1  # `tie`: a program must follow
TIE_PITCH = 2  # `tie ... program p`: its pitch must follow
TIE_PAIR = 3  # a whole tie pair: another pair, an event at step 0, a shift, or EOS
TIE_OR_EVENT = 4  # `program p` after a tie pair: a pitch continues the tie section, a velocity opens a note
STEP = 5  # a whole note or drum hit: another event of this step, a shift, or EOS
SHIFTED = 6  # a shift: an event of the new step (delta: or another shift) must follow
PROGRAM = 7  # `program p` of a note: its velocity must follow
VELOCITY = 8  # `program p, velocity v`: its pitch must follow
DRUM_VELOCITY = 9  # `velocity v` with no program: a drum must follow
DONE = 10  # EOS written: only EOS (what greedy's ignore_eos emits) and PAD (frozen beams) follow
# Most tokens a closing row still writes, EOS included: `program, velocity, pitch` completing the item a shift
# opened, then EOS.
CLOSE_TOKENS = 4

# Token types and values (shift k, pitch 0..87, velocity, program, drum 0..87), by id.
_SPECIAL, _SHIFT, _PITCH, _VELOCITY, _TIE, _PROGRAM, _DRUM = range(7)
_FIRST_IDS = [0, vocab.SHIFT.first_id, vocab.PITCH.first_id, vocab.VELOCITY.first_id, vocab.TIE_ID,
              vocab.PROGRAM.first_id, vocab.DRUM.first_id]
_OFF, _ON, _DRUM_GROUP = 0, 1, 2
_N_PITCH = vocab.PITCH.size  # 88
_N_PROGRAM = vocab.PROGRAM.size  # 128
_TOP = _N_PITCH - 1  # pitch / drum index of MIDI 108: the largest completion of an item


def _key(group, program, pitch):
    """The order of events inside one step: (group, program, pitch index) as one integer."""
    return (group * (_N_PROGRAM + 1) + program) * _N_PITCH + pitch


def _tie_key(program, pitch):
    return program * _N_PITCH + pitch


def _phase_in(phase: torch.Tensor, *phases: int) -> torch.Tensor:
    out = phase == phases[0]
    for p in phases[1:]:
        out = out | (phase == p)
    return out


class TokenGrammar:
    """Parser state of B chunk sequences, all decoded in lockstep on one device."""

    def __init__(self, batch: int, device, time_encoding: str = "absolute", max_step: int = MAX_STEP,
                 allowed: torch.Tensor | None = None):
        """allowed: multi-hot [B, 129] (128 = drums) of what each row may write; None, or an all-False row (the
        conditioning's 'unknown'), allows everything."""
        if time_encoding not in ("absolute", "delta"):
            raise ValueError(f"time_encoding must be 'absolute' or 'delta', not {time_encoding!r}")
        if not 1 <= max_step <= vocab.MAX_SHIFT_STEPS:
            raise ValueError(f"max_step must be in 1..{vocab.MAX_SHIFT_STEPS}, got {max_step}")
        self.absolute, self.max_step, self.device = time_encoding == "absolute", max_step, torch.device(device)
        if allowed is None:
            allowed = torch.ones(batch, vocab.DRUM_PROGRAM + 1, dtype=torch.bool, device=self.device)
        else:
            if allowed.shape != (batch, vocab.DRUM_PROGRAM + 1):
                raise ValueError(f"allowed must be [{batch}, {vocab.DRUM_PROGRAM + 1}] multi-hot, "
                                 f"got {tuple(allowed.shape)}")
            allowed = allowed.to(self.device) > 0
            allowed = allowed | ~allowed.any(1, keepdim=True)  # an empty set is 'unknown', not 'nothing'
        self.programs = allowed[:, :_N_PROGRAM]  # (B, 128)
        self.drums = allowed[:, vocab.DRUM_PROGRAM]  # (B,)
        ids = torch.arange(vocab.VOCAB_SIZE, device=self.device)
        first = torch.tensor(_FIRST_IDS, device=self.device)
        self._type = torch.bucketize(ids, first, right=True) - 1  # (V,)
        self._value = ids - first[self._type]  # (V,)
        self._shift = torch.arange(vocab.SHIFT.size, device=self.device)  # shift values 0..1000
        self._program = torch.arange(_N_PROGRAM, device=self.device)
        self._velocity = torch.arange(vocab.VELOCITY.size, device=self.device)
        self._pitch = torch.arange(_N_PITCH, device=self.device)

        def zeros():
            return torch.zeros(batch, dtype=torch.long, device=self.device)

        self.phase = zeros()  # START
        self.step = zeros()  # steps since the chunk start
        self.program = zeros()  # program of the item being written
        self.group = zeros()  # off / on / drum of the item being written
        self.last_key = zeros() - 1  # last event key of this step (-1: none yet)
        self.last_tie = zeros() - 1  # last tie key (-1: none yet)
        self.closing = torch.zeros(batch, dtype=torch.bool, device=self.device)  # finish the item, then EOS

    def __len__(self) -> int:
        return self.phase.shape[0]

    def allowed_tokens(self) -> torch.Tensor:
        """bool (B, vocab): the tokens each sequence may take next."""
        phase, B = self.phase, len(self)
        out = torch.zeros(B, vocab.VOCAB_SIZE, dtype=torch.bool, device=self.device)
        boundary = _phase_in(phase, START, TIE_PAIR, STEP)  # a whole item just ended (or nothing began)
        going_on = ~self.closing  # a closing row starts nothing new; a shift still needs its event
        opener = (boundary & going_on) | (phase == SHIFTED)  # a note or drum hit may start
        last_key, last_tie = self.last_key[:, None], self.last_tie[:, None]  # (B, 1)
        any_program = self.programs.any(1)
        any_event = any_program | self.drums  # a new step can hold something

        out[:, vocab.EOS] = boundary | (phase == DONE)
        out[:, vocab.TIE_ID] = (phase == START) & any_program & going_on

        k = self._shift[None]  # (1, 1001)
        if self.absolute:
            shift = boundary[:, None] & (k > self.step[:, None]) & (k <= self.max_step)
        else:
            shift = opener[:, None] & (k >= 1) & (self.step[:, None] + k <= self.max_step)
        out[:, vocab.SHIFT.first_id: vocab.SHIFT.last_id + 1] = shift & (any_event & going_on)[:, None]

        # program: opens a note if the step still has room for one of this program (its note-on at pitch 108),
        # or a tie pair right after `tie`
        p = self._program[None]  # (1, 128)
        note = opener[:, None] & (_key(_ON, p, _TOP) > last_key)
        tie = (phase == TIE_OPEN)[:, None] & (_tie_key(p, _TOP) > last_tie)
        out[:, vocab.PROGRAM.first_id: vocab.PROGRAM.last_id + 1] = self.programs & (note | tie)

        # velocity: after a note's program (0 = off, group 0; else on, group 1), or opening a drum hit (v > 0)
        v = self._velocity[None]  # (1, 128)
        after_program = _phase_in(phase, PROGRAM, TIE_OR_EVENT)[:, None]
        pitched = after_program & (_key((v > 0).long(), self.program[:, None], _TOP) > last_key)
        drum = (opener & self.drums)[:, None] & (v > 0) & (_key(_DRUM_GROUP, 0, _TOP) > last_key)
        out[:, vocab.VELOCITY.first_id: vocab.VELOCITY.last_id + 1] = pitched | drum

        n = self._pitch[None]  # (1, 88)
        tie_pitch = _phase_in(phase, TIE_PITCH, TIE_OR_EVENT)[:, None] & (_tie_key(self.program[:, None], n) > last_tie)
        note_pitch = (phase == VELOCITY)[:, None] & (_key(self.group[:, None], self.program[:, None], n) > last_key)
        out[:, vocab.PITCH.first_id: vocab.PITCH.last_id + 1] = tie_pitch | note_pitch
        out[:, vocab.DRUM.first_id: vocab.DRUM.last_id + 1] = ((phase == DRUM_VELOCITY)[:, None]
                                                              & (_key(_DRUM_GROUP, 0, n) > last_key))
        return out

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, vocab) logits or log-probs -> the same with -inf on every token the grammar forbids."""
        return logits.masked_fill(~self.allowed_tokens(), float("-inf"))

    def advance(self, token: torch.Tensor) -> None:
        """Take each sequence's chosen token (B,). PAD (what finished beams emit) leaves a state alone, and so
        does anything after EOS."""
        token = token.to(self.device).long()
        typ, val = self._type[token], self._value[token]
        phase = self.phase
        live = (phase != DONE) & (token != vocab.PAD)
        is_program, is_velocity = live & (typ == _PROGRAM), live & (typ == _VELOCITY)
        is_pitch, is_drum, is_shift = live & (typ == _PITCH), live & (typ == _DRUM), live & (typ == _SHIFT)
        tie_pitch = is_pitch & _phase_in(phase, TIE_PITCH, TIE_OR_EVENT)
        note_velocity = is_velocity & _phase_in(phase, PROGRAM, TIE_OR_EVENT)

        new = phase.clone()
        new = torch.where(live & (token == vocab.EOS), DONE, new)
        new = torch.where(live & (typ == _TIE), TIE_OPEN, new)
        new = torch.where(is_program, torch.where(phase == TIE_OPEN, TIE_PITCH,
                                                  torch.where(phase == TIE_PAIR, TIE_OR_EVENT, PROGRAM)), new)
        new = torch.where(is_velocity, torch.where(note_velocity, VELOCITY, DRUM_VELOCITY), new)
        new = torch.where(is_pitch, torch.where(tie_pitch, TIE_PAIR, STEP), new)
        new = torch.where(is_drum, STEP, new)
        new = torch.where(is_shift, SHIFTED, new)

        self.program = torch.where(is_program, val, self.program)
        self.group = torch.where(is_velocity, torch.where(note_velocity, (val > 0).long(), _DRUM_GROUP), self.group)
        self.last_tie = torch.where(tie_pitch, _tie_key(self.program, val), self.last_tie)
        key = torch.where(is_drum, _key(_DRUM_GROUP, 0, val), _key(self.group, self.program, val))
        self.last_key = torch.where((is_pitch & ~tie_pitch) | is_drum, key, self.last_key)
        self.last_key = torch.where(is_shift, -1, self.last_key)
        self.step = torch.where(is_shift, val if self.absolute else self.step + val, self.step)
        self.phase = new

    def close(self, rows: torch.Tensor) -> None:
        """Rows where `rows` (bool (B,)) is True end as soon as they can: the item they are inside, then EOS (at
        most CLOSE_TOKENS more tokens). Closing is for good: a closed row stays closed."""
        self.closing = self.closing | rows.to(self.device)

    def select(self, index: torch.Tensor) -> None:
        """Keep or reorder sequences: row i becomes old row index[i]."""
        index = index.to(self.device)
        for name in ("phase", "step", "program", "group", "last_key", "last_tie", "closing", "programs", "drums"):
            setattr(self, name, getattr(self, name)[index])
