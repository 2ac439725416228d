"""ModelConfig: presets match docs/design.md §5.7, parameter counts are pinned, checks refuse bad values."""
import pytest
import torch

from mt3ds.model.config import PRESETS, ModelConfig
from mt3ds.model.transcriber import Transcriber


def n_params(cfg: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: counting 45M parameters costs nothing
        return Transcriber(cfg).num_params()


# Pinned: any change to the architecture's shapes must show up here. base is checked by hand below.
@pytest.mark.parametrize("name, overrides, expected", [
    ("tiny", {}, 241_984),
    ("small", {}, 7_851_264),  # the 7.9M-parameter shape of the measured CPU run (docs/design.md §5.7)
    ("base", {}, 36_693_504),
    ("base_v2", {}, 45_060_608),  # SwiGLU adds a third 512 x 1024 matrix per block
    ("tiny", {"conditioning": "decoder_pool"}, 248_256),
    ("tiny", {"conditioning": "decoder_pool", "instrument_pool": "attention"}, 249_344),
    ("tiny", {"conditioning": "encoder_film"}, 264_896),
    ("tiny", {"conditioning": "dual_stream"}, 298_048),
    ("small", {"conditioning": "dual_stream"}, 10_764_416),
    ("tiny", {"aux_frame_loss": True}, 253_424),
    ("tiny", {"tie_embeddings": False, "positions": "learned"}, 727_168),
])
def test_parameter_counts(name, overrides, expected):
    assert n_params(ModelConfig.preset(name, **overrides)) == expected


def test_base_count_by_hand():
    d, inner, mlp, V = 512, 6 * 64, 1024, 1437
    attn = d * inner + d * 2 * inner + inner * d  # q, kv, out; no biases
    enc = 8 * (2 * 2 * d + attn + 2 * d * mlp)  # two LayerNorms (weight + bias), attention, GELU MLP
    dec = 8 * (3 * 2 * d + 2 * attn + 2 * d * mlp)  # three LayerNorms, self + cross attention, MLP
    total = 2 * 512 + 512 * d + enc + 2 * d + V * d + dec + 2 * d  # freq norm, in proj, enc norm, tied emb, dec norm
    assert n_params(PRESETS["base"]) == total


def test_base_is_design_step1_and_base_v2_is_step2():
    b = PRESETS["base"]
    assert (b.d_model, b.enc_layers, b.dec_layers, b.heads, b.head_dim, b.mlp_dim) == (512, 8, 8, 6, 64, 1024)
    assert (b.norm, b.mlp, b.positions, b.tie_embeddings) == ("layernorm", "gelu", "sinusoidal", True)
    assert (b.resid_dropout, b.mlp_dropout, b.attn_dropout) == (0.1, 0.1, 0.0)
    assert (b.max_enc_len, b.max_dec_len, b.max_tokens) == (4096, 2048, 1024)
    assert (b.conditioning, b.aux_frame_loss, b.time_encoding) == ("none", False, "absolute")
    v2 = PRESETS["base_v2"]
    assert (v2.norm, v2.mlp, v2.positions, v2.resid_dropout, v2.activation_checkpointing) == (
        "rmsnorm", "swiglu", "rope", 0.05, True)
    assert v2.d_model == b.d_model and v2.inner_dim == 384


def test_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig.preset("small", conditioning="dual_stream", aux_frame_loss=True, time_encoding="delta")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig keys: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"positions": "relative"}, "positions must be one of"),
    ({"attention_backend": "xformers"}, "attention_backend"),
    ({"conditioning": "late"}, "conditioning"),
    ({"time_encoding": "beats"}, "time_encoding"),
    ({"heads": 0}, "heads must be positive"),
    ({"resid_dropout": 1.0}, "resid_dropout"),
    ({"positions": "rope", "head_dim": 15}, "even for rope"),
    ({"max_tokens": 4096}, "exceeds max_dec_len"),
    ({"conditioning": "dual_stream", "instrument_layers": 2}, "instrument_layers"),
    ({"aux_pos_weight": 0.0}, "aux_pos_weight"),
])
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
