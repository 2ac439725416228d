"""The transcription model: features (log-mel on the device), attention backends and KV cache, blocks,
instrument conditioning, the encoder-decoder with generate(), its config and presets, and exported-model I/O."""
