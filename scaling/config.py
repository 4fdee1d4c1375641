"""Frozen configs for one training run: model, optimizer, data, and the run itself.

Every field states its unit. A config round-trips through `to_dict` / `from_dict` into `config.json` of
the run directory, so a run can be re-created from its own record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from scaling.errors import UserError
from scaling.numbers import parse_number

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu")
POSITIONS = ("rope", "learned")
ATTENTION_IMPLS = ("auto", "xla", "fused", "cudnn", "blockwise")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "linear")
WANDB_MODES = ("online", "offline", "disabled", "auto")
MESH_LAYOUTS = ("data", "fsdp")
# run_id and sweep name folders under the runs root. A leading '.' or '_' is kept for hidden and internal folders.
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MESH_TEXT = re.compile(rf"^({'|'.join(MESH_LAYOUTS)})(?:=(\d+|all))?$")
# TrainConfig fields that lay a run out on devices without changing what it computes. They are left out
# when a run's recorded config is compared with a new one, so a run may resume under another layout.
LAYOUT_FIELDS = ("mesh",)
# TrainConfig fields that set how a run is kept and watched, not what it trains: a resume may change them
# (for example a shorter checkpoint interval on a machine that is often interrupted). config.json keeps the first
# attempt's values.
OPERATION_FIELDS = ("max_epochs", "checkpoint_interval", "keep_checkpoints", "wandb_mode", "wandb_project")
# ModelConfig fields that choose how the model is computed, not what: every attention implementation gives
# the same function up to float32 rounding. Left out of the comparison too, so that a run started before
# "auto" existed (recorded as "xla") resumes under the default.
EXECUTION_FIELDS = ("attention_impl",)


def swiglu_hidden_size(d_model: int, multiple_of: int = 32) -> int:
    """Return the SwiGLU hidden width: 8/3 * d_model rounded up to `multiple_of`.

    Three matrices of 8/3 d each hold the same parameters as a 4x GELU MLP's two (Shazeer 2020, GLU variants).
    """
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


@dataclass(frozen=True)
class MeshPlan:
    """A training layout: how many devices the data axis spans and whether parameters are sharded."""

    devices: int | None = None  # devices on the data axis; None means every device in jax.devices()
    fsdp: bool = False  # True shards parameters and optimizer moments over the data axis
    source: str = field(default="mesh", compare=False)  # the setting it came from, as messages call it

    def __str__(self) -> str:
        return f"{'fsdp' if self.fsdp else 'data'}={self.devices if self.devices is not None else 'all'}"


def parse_mesh(text: str, name: str = "mesh") -> MeshPlan:
    """Parse `data=4`, `fsdp=4`, `data`, `fsdp` or `fsdp=all` into a MeshPlan; raise UserError otherwise.

    `name` is the setting the text came from, as error messages call it.
    """
    match = _MESH_TEXT.match(text.strip().replace(" ", ""))
    if not match:
        raise UserError(f"{name} {text!r} is not data=N or fsdp=N (N a device count or 'all'); try data=4 or fsdp=4")
    layout, count = match.groups()
    devices = None if count in (None, "all") else int(count)
    if devices is not None and devices < 1:
        raise UserError(f"{name} {text!r} asks for {devices} devices; use at least 1")
    return MeshPlan(devices=devices, fsdp=layout == "fsdp", source=name)


def check_mesh(mesh: Any, batch_size: int, name: str = "mesh", batch_name: str = "data.batch_size") -> None:
    """Raise UserError unless `mesh` is "" or a valid layout whose device count divides `batch_size`.

    A layout over all devices ("fsdp", "data=all") is checked against the batch only when the devices are
    known, by scaling.sharding.check_batch_divides. `name` and `batch_name` are the settings as error
    messages call them.
    """
    if not isinstance(mesh, str):
        raise UserError(f"{name}={mesh!r} must be a string such as 'data=4' or 'fsdp=4', or '' for the default")
    if not mesh.strip():
        return
    plan = parse_mesh(mesh, name)
    if plan.devices is not None and batch_size % plan.devices:
        raise UserError(
            f"{name} {mesh!r} splits each batch over {plan.devices} devices, but {batch_name}={batch_size} "
            f"is not a multiple of {plan.devices}; use a device count that divides {batch_size}, or change "
            f"{batch_name}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder-only Transformer."""

    vocab_size: int = 256  # tokens in the vocabulary
    d_model: int = 128  # residual stream width
    n_layers: int = 2  # Transformer blocks
    n_heads: int = 4  # query heads
    n_kv_heads: int | None = None  # key/value heads; None means n_heads (multi-head), 1 is multi-query
    head_dim: int | None = None  # width of one head; None means d_model // n_heads
    d_ff: int | None = None  # MLP hidden width; None means 4 d_model (GELU) or swiglu_hidden_size (SwiGLU)
    max_seq_len: int = 256  # maximum sequence length in tokens (sizes learned positions and the KV cache)
    norm: str = "rmsnorm"  # "rmsnorm" or "layernorm", applied before each sub-block (pre-norm)
    mlp: str = "swiglu"  # "swiglu" or "gelu"
    positions: str = "rope"  # "rope" or "learned"
    rope_base: float = 10000.0  # RoPE frequency base (theta)
    tie_embeddings: bool = True  # share the token embedding with the output head
    attention_impl: str = "auto"  # "auto", "xla", "fused" (CPU), "cudnn" (NVIDIA GPUs) or "blockwise" (low memory)
    z_loss: float = 0.0  # weight of the log(Z)^2 auxiliary loss on the output logits; 0 disables it
    compute_dtype: str = "auto"  # activations: "auto" (bfloat16 on GPU/TPU, float32 on CPU), "float32", "bfloat16", "float16"; parameters stay float32

    def __post_init__(self) -> None:
        _require_positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len")
        _require_choice(self, "norm", NORMS)
        _require_choice(self, "mlp", MLPS)
        _require_choice(self, "positions", POSITIONS)
        _require_choice(self, "attention_impl", ATTENTION_IMPLS)
        _require_choice(self, "compute_dtype", COMPUTE_DTYPES)
        for name in ("head_dim", "d_ff"):  # None picks the default; a number must be usable
            if getattr(self, name) is not None:
                _require_positive(self, name)
        if not (isinstance(self.rope_base, (int, float)) and self.rope_base > 1):
            raise UserError(f"model.rope_base={self.rope_base!r} must be a number above 1; the usual value is 10000")
        if not self.z_loss >= 0:
            raise UserError(f"model.z_loss={self.z_loss!r} must be >= 0 (0 turns it off); a usual weight is 1e-4")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise UserError(
                f"model.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "choose n_heads that divides d_model or set head_dim explicitly"
            )
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise UserError(
                f"model.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                "n_kv_heads must be a divisor of n_heads (1 for multi-query, n_heads for multi-head)"
            )
        if self.positions == "rope" and self.dim_per_head % 2:
            raise UserError(f"model.head_dim={self.dim_per_head} is odd; RoPE needs an even head_dim")

    @property
    def kv_heads(self) -> int:
        """Key/value heads after resolving the default."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        """Width of one attention head after resolving the default."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def hidden_size(self) -> int:
        """MLP hidden width after resolving the default."""
        if self.d_ff is not None:
            return self.d_ff
        return 4 * self.d_model if self.mlp == "gelu" else swiglu_hidden_size(self.d_model)


MAX_PEAK_LR = 1.0  # AdamW's steps are about the learning rate in size, so a larger peak rate is a typo


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, then cosine or linear decay to a floor at the run's last step."""

    peak_lr: float = 3e-3  # learning rate at the end of warmup
    min_lr_ratio: float = 0.1  # floor as a fraction of peak_lr, reached at the last step
    warmup_steps: int = 50  # optimizer steps of linear warmup; clipped to a fifth of the run if longer
    schedule: str = "cosine"  # decay shape after warmup: "cosine" or "linear"
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not on norms or biases)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables clipping

    def __post_init__(self) -> None:
        _require_choice(self, "schedule", SCHEDULES)
        if not self.peak_lr > 0:
            raise UserError(f"optimizer.peak_lr={self.peak_lr} must be positive; try 1e-3")
        if self.peak_lr > MAX_PEAK_LR:
            raise UserError(f"optimizer.peak_lr={self.peak_lr:g} is above {MAX_PEAK_LR:g}, where AdamW moves every "
                            "weight by about that much per step and training diverges; the usual values are 1e-4 to "
                            "1e-2 (check the exponent's sign, e.g. 3e-3)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"optimizer.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]; try 0.1")
        if self.warmup_steps < 0:
            raise UserError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        for name, usual in (("weight_decay", "0.1"), ("grad_clip", "1.0")):
            if not getattr(self, name) >= 0:
                raise UserError(f"optimizer.{name}={getattr(self, name)} must be >= 0 (0 turns it off); the "
                                f"usual value is {usual}")
        for name, usual in (("beta1", "0.9"), ("beta2", "0.95")):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"optimizer.{name}={getattr(self, name)} must lie in [0, 1); the usual value is "
                                f"{usual}")
        if not self.eps > 0:
            raise UserError(f"optimizer.eps={self.eps} must be positive; the usual value is 1e-8")


@dataclass(frozen=True)
class DataConfig:
    """Location of the prepared tokens and the shape of the batches cut from them."""

    path: str = ""  # folder written by `scaling data prepare` (train.bin, val.bin, meta.json)
    seq_len: int = 128  # tokens per training sequence
    batch_size: int = 16  # sequences per optimizer step
    eval_tokens: int = 32768  # validation tokens scored at each evaluation (a fixed set, the same every time)

    def __post_init__(self) -> None:
        _require_positive(self, "seq_len", "batch_size", "eval_tokens")

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step."""
        return self.seq_len * self.batch_size


@dataclass(frozen=True)
class TrainConfig:
    """One training run: a model trained on `tokens` tokens, the point L(N, D) of a scaling study."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokens: int = 1_000_000  # planned training tokens D; the run trains floor(D / tokens_per_step) steps
    seed: int = 0  # seeds the initialisation and the data order
    max_epochs: float | None = None  # refuse a run whose D exceeds this many passes over the training split
    run_id: str = "run"  # directory name under the sweep, and the W&B run name
    sweep: str = "adhoc"  # sweep name: the folder under RUNS and the W&B group
    flop_budget: float | None = None  # IsoFLOP budget C (FLOPs) this run belongs to; None outside IsoFLOP sweeps
    eval_interval: int = 100  # optimizer steps between validation passes (the last step is always evaluated)
    log_interval: int = 10  # optimizer steps between metric rows (the only host synchronisations)
    checkpoint_interval: int = 200  # optimizer steps between Orbax checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # checkpoints kept on disk, newest first
    wandb_mode: str = "auto"  # "online", "offline", "disabled", or "auto" (online with an API key, else offline)
    wandb_project: str = "scaling"
    # Device layout: "data=N" (data parallelism), "fsdp=N" (FSDP), "fsdp" or "data=all" for every device, or
    # "" to fall back to $SCALING_MESH, else data parallelism over all devices (scaling.sharding.resolve_plan).
    # The mesh does not change the losses, so a run may resume under another one (LAYOUT_FIELDS).
    mesh: str = ""

    def __post_init__(self) -> None:
        _require_choice(self, "wandb_mode", WANDB_MODES)
        for name in ("run_id", "sweep"):  # both become folder names under the runs root
            value = getattr(self, name)
            if not isinstance(value, str) or not FOLDER_NAME.match(value):
                raise UserError(f"{name}={value!r} must be a folder-safe name (letters, digits, '.', '_', '-', not "
                                f"starting with '.' or '_'), e.g. {name}: my-{name.replace('_id', '')}")
        check_mesh(self.mesh, self.data.batch_size)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed={self.seed!r} must be a whole number >= 0")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise UserError(f"max_epochs={self.max_epochs} must be positive, or null to allow any number of epochs")
        _require_positive(self, "tokens", "eval_interval", "log_interval", "checkpoint_interval", "keep_checkpoints")
        if self.eval_interval % self.log_interval:
            raise UserError(
                f"eval_interval={self.eval_interval} is not a multiple of log_interval={self.log_interval}; "
                "evaluations happen on logging steps, so choose a multiple"
            )
        if self.model.max_seq_len < self.data.seq_len:
            raise UserError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}; "
                "raise max_seq_len or shorten seq_len"
            )
        if self.total_steps < 1:
            raise UserError(
                f"tokens={self.tokens} is smaller than one batch of {self.data.tokens_per_step} tokens; "
                "raise tokens or shrink batch_size * seq_len"
            )

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: whole batches only, so D actually trained may be below `tokens`."""
        return self.tokens // self.data.tokens_per_step

    @property
    def tokens_trained(self) -> int:
        """Tokens the run really trains on (D recorded for fits): total_steps whole batches."""
        return self.total_steps * self.data.tokens_per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Build a config from nested dicts (config.json, a sweep's run), rejecting unknown keys."""
        raw = dict(raw)
        parts = {
            "model": _build(ModelConfig, _section(raw.pop("model", None), "model"), "model"),
            "optimizer": _build(OptimizerConfig, _section(raw.pop("optimizer", None), "optimizer"), "optimizer"),
            "data": _build(DataConfig, _section(raw.pop("data", None), "data"), "data"),
        }
        return _build(cls, {**raw, **parts}, "run")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def run_identity(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a config dict (`TrainConfig.to_dict()` or one read from config.json) without its layout,
    operation and execution fields and without `data.path`.

    Two configs with equal identities train the same model on the same data to the same losses, so they
    are one run however it is spread over devices. The corpus is identified by its fingerprint, which
    training checks against config.json, not by the path it was reached by: a run started with a relative
    path may resume with the absolute one, or after its corpus folder moved.
    """
    identity = {key: value for key, value in raw.items() if key not in LAYOUT_FIELDS + OPERATION_FIELDS}
    if isinstance(identity.get("model"), dict):
        identity["model"] = {key: value for key, value in identity["model"].items() if key not in EXECUTION_FIELDS}
    if isinstance(identity.get("data"), dict):
        identity["data"] = {key: value for key, value in identity["data"].items() if key != "path"}
    return identity


MAX_WARMUP_FRACTION = 0.2  # warmup longer than this share of a run is clipped to it (scaling.schedule)


def clipped_warmup(warmup_steps: int, total_steps: int) -> int:
    """Return the warmup steps a run of `total_steps` uses: `warmup_steps`, at most a fifth of the run."""
    return min(warmup_steps, int(MAX_WARMUP_FRACTION * total_steps))


PROGRAMS_KEPT = 4  # run shapes whose compiled programs a training process keeps for later runs (scaling.train)


def program_identity(config: TrainConfig) -> tuple:
    """Return what fixes a run's compiled programs: runs with equal identities can share them.

    The token budget, seed, schedule values, intervals and ids are arguments or host-side settings, so runs
    that differ only in those train with the same initialisation, step and evaluation programs.
    """
    return (config.model, config.optimizer, config.data.seq_len, config.data.batch_size, config.mesh)


def same_run(recorded: Any, config: TrainConfig) -> bool:
    """Return True when `recorded` (the "config" of a run's config.json) describes the run `config` describes.

    Layout fields are ignored on both sides, which also accepts records written before a field existed.
    """
    if not isinstance(recorded, dict):
        return False
    return run_identity(recorded) == run_identity(json.loads(json.dumps(config.to_dict())))


def config_differences(recorded: Any, config: TrainConfig, limit: int = 3) -> str:
    """Return the first `limit` keys where `recorded` (a config.json "config") and `config` differ, as
    "model.d_model 64 -> 96; seed 0 -> 1" (recorded value first); layout fields are left out."""
    if not isinstance(recorded, dict):
        return "the recorded config is not a mapping"
    old_flat = _flatten(run_identity(recorded))
    new_flat = _flatten(run_identity(json.loads(json.dumps(config.to_dict()))))
    keys = [key for key in sorted(set(old_flat) | set(new_flat)) if old_flat.get(key) != new_flat.get(key)]
    changes = [f"{key} {old_flat.get(key, '(absent)')} -> {new_flat.get(key, '(absent)')}" for key in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(changes) + more


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _section(raw: Any, name: str) -> dict[str, Any]:
    """Return a config section as a dict: an empty one (`model:` with nothing under it) means the defaults."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{name} must be a section of keys, e.g. {name}: {{...}}, not {type(raw).__name__} "
                        f"{raw!r}")
    return raw


def _build(cls: type, raw: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"unknown {where} key {unknown[0]!r}; known keys are: {', '.join(sorted(fields))}")
    values = dict(raw)
    for name, value in raw.items():
        kind = str(fields[name].type).split(" |")[0]
        if kind == "bool" and not isinstance(value, bool):
            # A quoted "no" would count as true, so only YAML's or JSON's unquoted true and false are accepted.
            raise UserError(f"{where}.{name}={value!r} must be true or false, without quotes")
        if isinstance(value, str) and kind == "float":
            values[name] = parse_number(value, f"{where}.{name}")
        elif kind == "int" and (isinstance(value, str) or isinstance(value, float)):
            # YAML reads 2e6 as a string and 2.0e6 as a float; either is fine for a count if it is whole.
            number = parse_number(value, f"{where}.{name}")
            if number != int(number):
                raise UserError(f"{where}.{name}={value!r} must be a whole number, e.g. 2e6 or 2M")
            values[name] = int(number)
    return cls(**values)


_CONFIG_KEY_PREFIX = {"TrainConfig": "", "ModelConfig": "model.", "OptimizerConfig": "optimizer.",
                      "DataConfig": "data."}  # where each dataclass's fields sit in a config file


def _config_key(config: Any, name: str) -> str:
    """Return the key of field `name` as a config file writes it, e.g. "model.d_model" or "tokens"."""
    return _CONFIG_KEY_PREFIX.get(type(config).__name__, f"{type(config).__name__}.") + name


def _require_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{_config_key(config, name)}={value!r} must be a positive integer; set it to 1 or more")


def _require_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise UserError(f"{_config_key(config, name)}={value!r} is not one of: {', '.join(choices)}")
