"""`mt3ds bench model` runs end to end on tiny sizes and reports every figure it promises."""
import json

from click.testing import CliRunner

from mt3ds.bench.model import bench_model
from mt3ds.cli import cli


def test_bench_model_tiny_figures():
    fig = bench_model(presets=("tiny",), batch=2, train_tokens=16, frames=16, decode_batch=2, decode_tokens=16,
                      check_tokens=4, repeats=1)
    assert fig["tiny_params"] == 241_984
    for key in ("tiny_train_step_fp32_s", "tiny_train_step_bf16_s", "tiny_greedy_cached_tok_s",
                "tiny_greedy_uncached_tok_s_est", "tiny_kv_cache_speedup", "tiny_kv_cache_speedup_4_tokens_measured"):
        assert fig[key] > 0, key
    assert fig["kv_cache_speedup"] == fig["tiny_kv_cache_speedup"]


def test_cli_bench_model_json():
    result = CliRunner().invoke(cli, ["bench", "model", "--json", "--preset", "tiny", "--batch", "1",
                                      "--train-tokens", "8", "--decode-batch", "1", "--decode-tokens", "8",
                                      "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kv_cache_speedup"] > 0
