"""Training tokens per second on a data-parallel mesh of CPU devices, XLA's attention against the fused
kernel that each device runs on its own rows (`models.attention.batch_split_over`).

The host's cores are split into `--devices` XLA CPU devices (`--xla_force_host_platform_device_count`),
and the Trainer lays the batch out over them with `mesh=data=N`. A third trainer runs the fused kernel on
the first device alone. All three are timed in one process, in alternating rounds; each number is the
best round, since other processes can only slow a round down. Freed host memory is kept as training keeps
it for the largest size (scaling/host_memory.py).

    python benchmarks/mesh_attention.py --devices 2 --sizes 128,512 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.widths import parse_widths  # noqa: E402

SETTLE_S = 0.5  # pause before each timed round, so the previous engine's threads stop spinning


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--devices", type=int, default=2, help="XLA CPU devices of the mesh (default 2)")
    parser.add_argument("--sizes", default="128,512", help="comma-separated d_model values (default 128,512)")
    parser.add_argument("--layers", type=int, default=4, help="Transformer blocks (default 4)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        sizes = parse_widths(args.sizes)
    except ValueError as error:
        parser.error(str(error))
    for name in ("layers", "seq_len", "batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.devices < 1 or args.batch % args.devices:
        parser.error(f"--devices {args.devices} must be at least 1 and divide --batch {args.batch}")
    args.sizes = sizes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    # JAX reads XLA_FLAGS when it starts, so it is imported only now.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.machine import cpu_model
    from models.attention import training_attention
    from scaling.batches import batch_at
    from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
    from scaling.host_memory import estimated_step_temp_bytes, keep_freed_memory
    from scaling.schedule import schedule_values
    from scaling.train import Trainer

    def train_config(d_model: int, impl: str, mesh: str) -> TrainConfig:
        model = ModelConfig(d_model=d_model, n_layers=args.layers, n_heads=d_model // 32, max_seq_len=args.seq_len,
                            attention_impl=impl)
        return TrainConfig(model=model, optimizer=OptimizerConfig(peak_lr=1e-3, warmup_steps=2),
                           data=DataConfig(path="unused", seq_len=args.seq_len, batch_size=args.batch),
                           tokens=10**9, wandb_mode="disabled", mesh=mesh)

    # As `scaling.train.train` does for a step of this size, before XLA's threads start (scaling/host_memory.py).
    kept_freed_memory = keep_freed_memory(max(estimated_step_temp_bytes(train_config(d, "auto", ""))
                                              for d in args.sizes))
    tokens = np.random.default_rng(0).integers(0, 256, size=500_000).astype(np.uint16)

    def batch(step: int) -> np.ndarray:
        return batch_at(tokens, step, batch_size=args.batch, seq_len=args.seq_len, seed=0)

    rows = []
    for d_model in args.sizes:
        trainers = {}
        variants = {"xla": ("xla", None), "auto": ("auto", None), "one_device": ("auto", jax.devices()[:1])}
        for name, (impl, devices) in variants.items():
            config = train_config(d_model, impl, "" if devices is not None else f"data={args.devices}")
            trainer = Trainer(config, devices=devices)
            schedule = {k: jnp.asarray(v, jnp.float32) for k, v in schedule_values(config.optimizer, 10**6).items()}
            trainers[name] = (trainer, trainer.init_state(0), schedule)

        def round_tokens_per_s(name: str, first_step: int) -> float:
            trainer, state, schedule = trainers[name]
            state, metrics = trainer.step_fn(state, batch(first_step), schedule)
            jax.block_until_ready(metrics)  # the first call of a path compiles
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            for step in range(first_step + 1, first_step + 1 + args.steps):
                state, metrics = trainer.step_fn(state, batch(step), schedule)
            jax.block_until_ready(metrics)
            trainers[name] = (trainer, state, schedule)
            return args.steps * args.batch * args.seq_len / (time.perf_counter() - start)

        measured = {name: [] for name in variants}
        for round_index in range(args.rounds):
            for name in measured:
                measured[name].append(round_tokens_per_s(name, round_index * (args.steps + 1)))
        best = {name: max(values) for name, values in measured.items()}
        row = {"d_model": d_model, "n_layers": args.layers, "devices": args.devices,
               "auto_resolves_to": training_attention(trainers["auto"][0].config.model),
               "xla_attention_tokens_per_s": round(best["xla"]),
               "fused_attention_tokens_per_s": round(best["auto"]),
               "ratio": round(best["auto"] / best["xla"], 2),
               "one_device_fused_tokens_per_s": round(best["one_device"]),
               "ratio_vs_one_device": round(best["auto"] / best["one_device"], 2),
               "rounds": {name: [round(value) for value in values] for name, values in measured.items()}}
        rows.append(row)
        if not args.json:
            print(f"d_model {d_model}, {args.devices} devices: XLA attention {row['xla_attention_tokens_per_s']} "
                  f"tokens/s, {row['auto_resolves_to']} attention {row['fused_attention_tokens_per_s']} "
                  f"tokens/s ({row['ratio']}x); fused on the first device alone "
                  f"{row['one_device_fused_tokens_per_s']} tokens/s (data={args.devices} runs "
                  f"{row['ratio_vs_one_device']}x as fast)")

    if args.json:
        print(json.dumps({"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "jax": jax.__version__,
                          "batch": args.batch, "seq_len": args.seq_len, "kept_freed_memory": kept_freed_memory,
                          "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
