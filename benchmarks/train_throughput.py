"""Training throughput on the CPU or an accelerator: tokens per second and model FLOPs utilisation, beside PyTorch.

    python benchmarks/train_throughput.py --json

For each model width of the ladder (same depth, heads of `--head-dim`), the script times full optimizer
steps of `scaling.train.Trainer` (forward, backward, gradient clipping, AdamW, donated state) on random
byte tokens, and the same architecture trained by PyTorch in the same process: eager, and `torch.compile`
unless `--no-compile`. The PyTorch model (`TorchDecoder`) has the same parameters, initialisation, RoPE
pairing, RMSNorm, SwiGLU, tied embeddings and causal attention (`scaled_dot_product_attention`), and
`torch.optim.AdamW` with the same betas, epsilon, decay mask and clipping.

Model FLOPs utilisation (MFU) is the exact training FLOPs per second (scaling.accounting, Hoffmann et al.
2022 appendix F: forward matrix multiplies, attention and logits, times 3) divided by
`matmul_peak_flops`: the fastest float32 matrix multiply this script measured in the same run, over XLA
and PyTorch and square sizes 1024 and 2048. Every engine gets `--threads` threads.

The runs are interleaved (JAX, torch eager, torch compiled, then again) `--repeats` times, with a pause of
SETTLE_S before each so that the previous engine's threads have stopped spinning, and each engine's fastest
run is reported: other processes on a shared machine can only slow a run down, never speed it up. The
spread (slowest over fastest) is printed beside it.
Set XLA_FLAGS before starting to compare XLA settings: the script records the flags it ran with.
`--cpu-devices N` splits the host into N XLA CPU devices and trains JAX data-parallel over them (finding 18
of docs/benchmarks.md), and the output records it.
The script keeps freed host memory in the heap for the whole process, PyTorch included, when the largest
size's step needs it, as `scaling.train.train` does (scaling/host_memory.py). SCALING_KEEP_FREED_MEMORY=0
measures both engines with glibc's defaults instead, and `kept_freed_memory` in the output records which ran.

On a GPU or TPU the same script runs a wider ladder (ACCELERATOR_DEFAULTS) in bfloat16 (parameters stay
float32), with cuDNN flash attention on NVIDIA GPUs, and PyTorch on CUDA with bfloat16 autocast as the peer.
There MFU divides by the chip's published dense bfloat16 peak (scaling/accelerators.py, or --peak-flops),
and `mfu_vs_measured_matmul` by the best bfloat16 matrix multiply of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


CPU_DEFAULTS = {"sizes": "64,128,256,512", "layers": 4, "seq_len": 256, "batch": 8}
# On a GPU or TPU the CPU ladder is too small to keep the chip busy: wider models, longer sequences.
ACCELERATOR_DEFAULTS = {"sizes": "512,1024,2048", "layers": 8, "seq_len": 1024, "batch": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="d_model ladder, comma-separated (default 64,128,256,512 on CPU, "
                                        "512,1024,2048 on a GPU or TPU)")
    parser.add_argument("--layers", type=int, help="Transformer blocks at every width (default 4 on CPU, 8 on an accelerator)")
    parser.add_argument("--head-dim", type=int, default=32, help="width of one attention head (default 32)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 256 on CPU, 1024 on an accelerator)")
    parser.add_argument("--batch", type=int, help="sequences per optimizer step (default 8 on CPU, 32 on an accelerator)")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size (default 256, bytes)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per measurement; 0 picks about 2 s worth for each size")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per engine (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (default 2)")
    parser.add_argument("--compute-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="activation dtype of both engines; auto: bfloat16 on a GPU or TPU, float32 on CPU")
    parser.add_argument("--attention", default="auto", choices=("auto", "xla", "fused", "cudnn"),
                        help="JAX attention; auto: cuDNN flash attention on an NVIDIA GPU in bfloat16, the fused "
                             "CPU kernel on a CPU in float32, else XLA")
    parser.add_argument("--compare-attention", choices=("xla", "fused"), default=None,
                        help="also time the JAX trainer with this attention, interleaved with the others")
    parser.add_argument("--peak-flops", type=float,
                        help="the chip's peak FLOP/s for MFU, for an accelerator that scaling.accelerators "
                             "does not know (default: its published dense bfloat16 peak)")
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="split the host into this many XLA CPU devices and train JAX with mesh data=N "
                             "(default 1); PyTorch is unaffected")
    parser.add_argument("--no-torch", action="store_true", help="time the JAX trainer only")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


# Parsed before JAX and PyTorch are imported, because their thread pools read these variables at import.
ARGS = parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
if ARGS.cpu_devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.cpu_devices}").strip()
# On a GPU, JAX would otherwise reserve 75% of its memory at start and leave PyTorch's peer too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from scaling.accounting import parameter_counts, training_flops_per_token  # noqa: E402
from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from scaling.host_memory import estimated_step_temp_bytes, keep_freed_memory  # noqa: E402
from scaling.schedule import schedule_values  # noqa: E402
from models import fused_attention  # noqa: E402
from models.attention import check_cudnn_available  # noqa: E402
from scaling.accelerators import known_parts, published_bf16_peak  # noqa: E402
from scaling.errors import UserError  # noqa: E402
from scaling.train import Trainer  # noqa: E402



def largest_step_temp_bytes(args: argparse.Namespace) -> int:
    """Return the temporaries of the ladder's largest step, with the CPU ladder's shape for unset options."""
    shape = {name: getattr(args, name) or value for name, value in CPU_DEFAULTS.items()}
    return max(estimated_step_temp_bytes(TrainConfig(
        model=ModelConfig(vocab_size=args.vocab, d_model=int(size), n_layers=shape["layers"],
                          n_heads=max(1, int(size) // args.head_dim), max_seq_len=shape["seq_len"]),
        data=DataConfig(path="unused", seq_len=shape["seq_len"], batch_size=shape["batch"])))
        for size in shape["sizes"].split(","))


# train() decides this before JAX starts its threads, because an arena, once given to a thread, stays with
# it (scaling/host_memory.py). So the benchmark decides here, before its first call to the backend.
KEPT_FREED_MEMORY = keep_freed_memory(largest_step_temp_bytes(ARGS))
ON_ACCELERATOR = jax.default_backend() in ("gpu", "tpu")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the shape options left unset with this backend's defaults, and resolve dtype and attention."""
    defaults = ACCELERATOR_DEFAULTS if ON_ACCELERATOR else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.compute_dtype == "auto":
        args.compute_dtype = "bfloat16" if ON_ACCELERATOR else "float32"
    if args.attention == "auto":
        nvidia = jax.default_backend() == "gpu" and "nvidia" in jax.devices()[0].device_kind.lower()
        if nvidia and args.compute_dtype == "bfloat16":
            args.attention = "cudnn"
        elif args.compute_dtype == "float32" and fused_attention.auto_uses_kernel():
            args.attention = "fused"
        else:
            args.attention = "xla"
    for choice in {args.attention, args.compare_attention} & {"fused"}:
        reason = fused_attention.unavailable_reason()
        if args.compute_dtype != "float32":
            reason = f"it computes in float32 only, not {args.compute_dtype}"
        if reason is not None:
            raise UserError(f"attention {choice} cannot run: {reason}; pass --attention xla")
    if args.attention == "cudnn":
        try:  # a clear error now, not after the first size
            check_cudnn_available(jnp.dtype(args.compute_dtype))
        except UserError as error:
            reason = str(error).split("; ")[0]  # keep the reason only, because the fix here is an option
            raise UserError(f"--attention cudnn cannot run: {reason}; pass --attention xla") from None
    if args.cpu_devices < 1 or args.batch % args.cpu_devices:
        raise UserError(f"--cpu-devices {args.cpu_devices} must be at least 1 and divide --batch {args.batch}")
    if args.cpu_devices > 1 and ON_ACCELERATOR:
        raise UserError(f"--cpu-devices {args.cpu_devices} splits a CPU, but JAX runs on {jax.default_backend()}; "
                        "leave it at 1")
    if args.peak_flops is not None and not args.peak_flops > 0:
        raise UserError(f"--peak-flops {args.peak_flops} must be positive, in FLOP/s (an H100 SXM's is 989.5e12)")
    return args


def model_config(d_model: int, args: argparse.Namespace, attention: str | None = None) -> ModelConfig:
    return ModelConfig(vocab_size=args.vocab, d_model=d_model, n_layers=args.layers,
                       n_heads=max(1, d_model // args.head_dim), max_seq_len=args.seq_len,
                       compute_dtype=args.compute_dtype, attention_impl=attention or args.attention)


def train_config(model: ModelConfig, args: argparse.Namespace, steps: int) -> TrainConfig:
    return TrainConfig(model=model, optimizer=OptimizerConfig(warmup_steps=2),
                       data=DataConfig(path="unused", seq_len=args.seq_len, batch_size=args.batch),
                       tokens=steps * args.seq_len * args.batch, wandb_mode="disabled",
                       mesh=f"data={args.cpu_devices}" if args.cpu_devices > 1 else "")


def random_batches(count: int, args: argparse.Namespace, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, args.vocab, size=(count, args.batch, args.seq_len + 1)).astype(np.int32)


# ---------------------------------------------------------------------------------------------- peak rate


def matmul_peak(args: argparse.Namespace, torch_device: str | None) -> dict[str, float]:
    """Return the best matmul FLOP/s of XLA and of PyTorch in the compute dtype, over two square sizes.

    On CPU: 1,024 and 2,048 in float32. On a GPU or TPU: 4,096 and 8,192, large enough to reach the
    chip's matrix units' steady rate.
    """
    sizes = (4096, 8192) if ON_ACCELERATOR else (1024, 2048)
    dtype = jnp.dtype(args.compute_dtype)
    rates = {}
    for n in sizes:
        a = np.random.default_rng(1).standard_normal((n, n), np.float32)
        b = np.random.default_rng(2).standard_normal((n, n), np.float32)
        product = jax.jit(jnp.matmul)
        ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        product(ja, jb).block_until_ready()
        rates[f"xla_{n}"] = 2 * n**3 / best_time(lambda: product(ja, jb).block_until_ready())
        if torch_device is not None:
            import torch

            torch.set_num_threads(args.threads)
            torch_dtype = getattr(torch, args.compute_dtype)
            ta = torch.from_numpy(a).to(device=torch_device, dtype=torch_dtype)
            tb = torch.from_numpy(b).to(device=torch_device, dtype=torch_dtype)

            def torch_product():
                torch.matmul(ta, tb)
                if torch_device == "cuda":
                    torch.cuda.synchronize()

            torch_product()
            rates[f"torch_{n}"] = 2 * n**3 / best_time(torch_product)
    return rates


def mfu_peak(args: argparse.Namespace) -> tuple[float | None, str]:
    """Return the peak FLOP/s that MFU divides by on an accelerator, and where it comes from.

    On CPU there is no published figure to trust (it depends on clock, cores and vector units), so MFU is
    measured against the best matrix multiply of the same run, and this returns (None, "measured").
    """
    if args.peak_flops is not None:
        return args.peak_flops, "--peak-flops"
    if not ON_ACCELERATOR:
        return None, "measured"
    kind = jax.devices()[0].device_kind
    peak = published_bf16_peak(kind)
    if peak is None:
        raise UserError(f"no published bfloat16 peak is known for device {kind!r} (known: {', '.join(known_parts())}); "
                        "pass --peak-flops FLOP/s from its datasheet (dense, without sparsity)")
    return peak.bf16_flops, f"{peak.name}: {peak.source}"


def torch_device_for(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Return the PyTorch device of the peer ("cpu" or "cuda"), or None with the reason it cannot run."""
    if args.no_torch:
        return None, "--no-torch"
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not ON_ACCELERATOR:
        return "cpu", None
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda", None
    return None, f"PyTorch cannot use this {jax.default_backend()}"


SETTLE_S = 0.5  # pause before each timed run, so the previous engine's worker threads stop spinning


def best_time(work, repeats: int = 7) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------------------------------------- JAX


class JaxRunner:
    """The project's own trainer: a compiled step with the state donated, fed host batches."""

    def __init__(self, model: ModelConfig, args: argparse.Namespace, steps: int):
        self.config = train_config(model, args, steps)
        self.trainer = Trainer(self.config)
        self.state = self.trainer.init_state(0)
        self.schedule = {key: jnp.asarray(value, jnp.float32)
                         for key, value in schedule_values(self.config.optimizer, steps).items()}
        # On the device before timing, as the training loop's prefetch would have them.
        self.batches = [self.trainer.put_batch(batch) for batch in random_batches(steps, args)]
        self.run(2)  # compile, and reach the steady state

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        metrics = None
        for step in range(steps):
            self.state, metrics = self.trainer.step_fn(self.state, self.batches[step % len(self.batches)],
                                                       self.schedule)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- PyTorch


def torch_runner(model: ModelConfig, args: argparse.Namespace, steps: int, compiled: bool, device: str):
    """Return a PyTorch runner of the same architecture; raises whatever torch.compile raises."""
    import torch

    torch.set_num_threads(args.threads)
    return TorchRunner(model, args, steps, compiled, device)


class TorchRunner:
    """The peer: the same model in PyTorch, on `device`, with bfloat16 autocast when JAX computes in bfloat16."""

    def __init__(self, model: ModelConfig, args: argparse.Namespace, steps: int, compiled: bool, device: str):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.device = device
        # Autocast keeps float32 parameters and runs products in bfloat16, as compute_dtype does in JAX.
        self.autocast_dtype = torch.bfloat16 if args.compute_dtype == "bfloat16" else None
        self.module = TorchDecoder(model).to(device)
        decay = [p for p in self.module.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.module.parameters() if p.ndim < 2]
        opt = OptimizerConfig()
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.peak_lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
        )
        self.grad_clip = opt.grad_clip
        self.batches = torch.from_numpy(random_batches(steps, args).astype(np.int64)).to(device)
        self.step_fn = torch.compile(self._step) if compiled else self._step
        self.run(2)

    def _step(self, batch):
        torch = self.torch
        with torch.autocast(self.device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.module(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for step in range(steps):
            loss = self.step_fn(self.batches[step % len(self.batches)])
        float(loss)  # waits for the device
        return time.perf_counter() - start


def TorchDecoder(model: ModelConfig):  # noqa: N802 - builds a torch.nn.Module class lazily, so torch stays optional
    import torch
    from torch import nn
    from torch.nn import functional as F

    std = 0.02
    out_std = std / math.sqrt(2 * model.n_layers)
    heads, head_dim, hidden = model.n_heads, model.dim_per_head, model.hidden_size

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(model.d_model))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale

    def linear(inputs, outputs, init_std):
        layer = nn.Linear(inputs, outputs, bias=False)
        nn.init.normal_(layer.weight, std=init_std)
        return layer

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = model.d_model
            self.attention_norm, self.mlp_norm = RMSNorm(), RMSNorm()
            self.query, self.key, self.value = (linear(d, heads * head_dim, std) for _ in range(3))
            self.out = linear(heads * head_dim, d, out_std)
            self.gate, self.up = linear(d, hidden, std), linear(d, hidden, std)
            self.down = linear(hidden, d, out_std)

        def forward(self, x, cos, sin):
            batch, length, _ = x.shape
            h = self.attention_norm(x)
            q = rope(self.query(h).view(batch, length, heads, head_dim), cos, sin).transpose(1, 2)
            k = rope(self.key(h).view(batch, length, heads, head_dim), cos, sin).transpose(1, 2)
            v = self.value(h).view(batch, length, heads, head_dim).transpose(1, 2)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(attended.transpose(1, 2).reshape(batch, length, heads * head_dim))
            h = self.mlp_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def rope(x, cos, sin):  # pairs (2i, 2i+1) rotated by position * theta_i, as models.transformer.apply_rope
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(model.vocab_size, model.d_model)
            nn.init.normal_(self.embed.weight, std=std)
            self.blocks = nn.ModuleList(Block() for _ in range(model.n_layers))
            self.final_norm = RMSNorm()
            theta = model.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            angles = torch.arange(model.max_seq_len, dtype=torch.float32)[:, None] * theta
            self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)
            self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)

        def forward(self, tokens):
            length = tokens.shape[1]
            x = self.embed(tokens)
            cos, sin = self.cos[:length], self.sin[:length]
            for block in self.blocks:
                x = block(x, cos, sin)
            return self.final_norm(x) @ self.embed.weight.T

    return Decoder()


# ---------------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> dict:
    torch_device, torch_skipped = torch_device_for(args)
    use_torch = torch_device is not None
    published_peak, peak_source = mfu_peak(args)  # fails here, before any timing, on an unknown chip
    sizes = [int(size) for size in args.sizes.split(",")]
    peaks = matmul_peak(args, torch_device)
    measured_peak = max(peaks.values())
    results = []
    for d_model in sizes:
        model = model_config(d_model, args)
        tokens_per_step = args.batch * args.seq_len
        flops_per_token = training_flops_per_token(model, args.seq_len)["exact"]
        rate_guess = published_peak or measured_peak
        steps = args.steps or max(2, round(2.0 * rate_guess * 0.4 / (flops_per_token * tokens_per_step)))
        engines = {"jax": JaxRunner(model, args, steps)}
        compared = f"jax_{args.compare_attention}_attention"
        if args.compare_attention:
            engines[compared] = JaxRunner(model_config(d_model, args, args.compare_attention), args, steps)
        errors = {}
        if use_torch:
            engines["torch_eager"] = torch_runner(model, args, steps, compiled=False, device=torch_device)
            if not args.no_compile:
                try:
                    engines["torch_compile"] = torch_runner(model, args, steps, compiled=True, device=torch_device)
                except Exception as error:  # torch.compile needs a C++ compiler and may fail on some setups
                    errors["torch_compile"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                time.sleep(SETTLE_S)
                times[name].append(engine.run(steps))
        rates = {name: steps * tokens_per_step / min(values) for name, values in times.items()}
        spread = {name: round(max(values) / min(values), 2) for name, values in times.items()}
        row = {
            "d_model": d_model,
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "params": parameter_counts(model)["total"],
            "exact_flops_per_token": flops_per_token,
            "steps_timed": steps,
            "tokens_per_s": round(rates["jax"], 1),
            "mfu": None,  # filled in below, once the run's best matrix multiply is known
        }
        if args.compare_attention:
            row[f"{compared}_tokens_per_s"] = round(rates[compared], 1)
            row[f"ratio_vs_{compared}"] = round(rates["jax"] / rates[compared], 3)
        if use_torch:
            row["torch_eager_tokens_per_s"] = round(rates["torch_eager"], 1)
            row["ratio_vs_torch_eager"] = round(rates["jax"] / rates["torch_eager"], 3)
            if "torch_compile" in rates:
                row["torch_compile_tokens_per_s"] = round(rates["torch_compile"], 1)
                row["ratio_vs_torch_compile"] = round(rates["jax"] / rates["torch_compile"], 3)
            if errors:
                row["torch_compile_error"] = errors["torch_compile"]
        row["slowest_over_fastest"] = spread
        results.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)
    later = matmul_peak(args, torch_device)  # a second look: the peak is the best seen in the whole run
    peaks = {name: max(rate, later[name]) for name, rate in peaks.items()}
    measured_peak = max(peaks.values())
    peak = published_peak or measured_peak
    for row in results:
        per_token = row["exact_flops_per_token"]
        row["mfu"] = round(row["tokens_per_s"] * per_token / peak, 4)
        if use_torch:
            row["torch_eager_mfu"] = round(row["torch_eager_tokens_per_s"] * per_token / peak, 4)
        if published_peak is not None:
            row["mfu_vs_measured_matmul"] = round(row["tokens_per_s"] * per_token / measured_peak, 4)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_name(),
        "backend": jax.default_backend(),
        "threads": args.threads,
        "cpu_devices": args.cpu_devices,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kept_freed_memory": KEPT_FREED_MEMORY,
        "jax": jax.__version__,
        "torch": _torch_version() if use_torch else None,
        "torch_device": torch_device,
        "torch_skipped": torch_skipped,
        "compute_dtype": args.compute_dtype,
        "attention_impl": args.attention,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "matmul_peak_flops": measured_peak,
        "matmul_rates": {name: round(rate) for name, rate in peaks.items()},
        "mfu_peak_flops": peak,
        "mfu_peak_source": peak_source,
        "load_average": os.getloadavg()[0],
        "sizes": results,
    }


def machine_name() -> str:
    """Return the accelerator JAX runs on, or the CPU model and core count."""
    if ON_ACCELERATOR:
        devices = jax.devices()
        return f"{devices[0].device_kind} x{len(devices)}, host {cpu_model()}, {os.cpu_count()} cores"
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _torch_version() -> str:
    import torch

    return torch.__version__


def main() -> None:
    try:
        result = measure(resolve_defaults(ARGS))  # UserError: a bad option, found before any timing
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=None if ARGS.json else 2))


if __name__ == "__main__":
    main()
