"""Training with DeepSpeed (bin/train.py is the entry point; ds_configs/README.md says which config when).

    config.py       TrainConfig and its sections (each checks itself) from YAML (yaml.safe_load, every key and type
                    checked), and the ds_config it resolves
    engine.py       distributed start (nccl / gloo), checks before anything heavy, the training loop in named steps
    ema.py          fp32 exponential moving average of the weights (validation and export use it)
    validate.py     teacher-forced token loss / accuracy, and note F1 of chunks decoded for real
    checkpoints.py  atomic, resumable checkpoints; keep_last / keep_best retention; RNG states
    metrics.py      metric lines to stdout, metrics.jsonl and TensorBoard (MFU from model/flops.py)
    export.py       a run's EMA weights -> one safetensors file with its metadata (loaded by model/io.py)
"""
