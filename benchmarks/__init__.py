"""Speed and memory benchmarks of jina-clip-v2 (issue 7).

- ``benchmarks.flops``: analytic FLOPs of both towers from a config, training-step multipliers, GPU peaks, MFU.
- ``benchmarks.encode``: image / text encoding throughput, memory, MFU and parity, with timm's ``Eva`` and the
  padded eager text path as in-process baselines.
- ``benchmarks.train_step``: one training step per stage (plain / gradient caching x gradient checkpointing).

Every script writes ``--out <name>.json`` and a markdown table next to it (``<name>.md``); ``--tiny`` runs a tiny
random config on any device in seconds (the tests use it). See ``benchmarks/README.md``.
"""
