"""The decoder and everything about running it.

- transformer.py: the Flax decoder-only Transformer, used for training and for cached decoding.
- attention.py: attention over grouped key/value heads, in XLA, blockwise and cuDNN implementations.
- kv_cache.py: the preallocated key/value cache, the compute dtype, and the cache-size calculator.
- generate.py: sampling, the prefill and decode loop, and an uncached reference decoder.
- restore.py: a trained run's config, newest checkpoint and tokenizer, loaded for inference.
- cli.py: the `scaling generate` command.
- size_ladder.py: model shapes for a target parameter count.
"""
