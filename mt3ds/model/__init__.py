"""The transcription model: features (log-mel on the device), attention backends and KV cache, blocks,
instrument conditioning, the encoder-decoder, its generation (greedy, beam search, grammar), its config and
presets, and exported-model I/O."""
