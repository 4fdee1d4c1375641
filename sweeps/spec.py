"""Sweep specs: the YAML file that describes a sweep, and its expansion into one TrainConfig per run.

A spec names the sweep (`name`, its folder under RUNS) and the corpus (`data`). It fixes the model family
(`model`: ModelConfig fields other than the shape, which models.size_ladder picks for each size), the
optimizer and the training settings shared by all runs (`train`). It lists the runs in one of two forms:
- `grid: {params: [...], tokens: [...]}`: every model size N trained on every token budget D, each D at
  least one batch (train.seq_len x train.batch_size tokens) and rounded to whole batches;
- `isoflop: {budgets: [...], params: [...]}`: for each FLOP budget C, each size N trained on D = C / F(N)
  tokens, where F is the training FLOPs per token named by `flops_per_token` (`6N_total` by default, or
  `6N_non_embedding`, or `exact` from scaling.accounting). `params` is one list for every budget, or a
  mapping budget -> list.
Counts may be written 1e6, "3.2e5" or "1M" (see scaling.numbers). The packaged specs live in sweeps/specs/,
and `load_spec("demo")` finds sweeps/specs/demo.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.size_ladder import DEFAULT_ASPECT_RATIO, DEFAULT_HEAD_DIM, describe, model_for_params
from scaling.accounting import parameter_counts, training_flops_per_token
from scaling.config import WANDB_MODES, DataConfig, ModelConfig, OptimizerConfig, TrainConfig, check_mesh
from scaling.errors import UserError, yaml_problem
from scaling.paths import runs_root as resolve_runs_root
from scaling.numbers import format_count, parse_count, parse_number
from scaling.yaml_text import load_yaml

log = logging.getLogger(__name__)

SPECS_DIR = Path(__file__).resolve().parent / "specs"
FLOPS_CONVENTIONS = ("6N_total", "6N_non_embedding", "exact")  # the keys of scaling.accounting's FLOPs per token
PARAM_CONVENTIONS = ("total", "non_embedding")

TOP_KEYS = ("name", "description", "data", "model", "optimizer", "train", "flops_per_token", "grid", "isoflop",
            "resources", "slurm")
DATA_KEYS = ("source", "tokenizer", "vocab_size", "text_field", "val_fraction")
LADDER_KEYS = ("convention", "aspect_ratio", "head_dim", "query_heads_per_kv")
# ModelConfig fields that the size ladder or the corpus sets for each run, so a spec may not fix them.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
TRAIN_KEYS = ("seq_len", "batch_size", "eval_tokens", "eval_interval", "log_interval", "checkpoint_interval",
              "keep_checkpoints", "seed", "wandb_mode", "wandb_project", "max_epochs", "mesh")
GRID_KEYS = ("params", "tokens")
ISOFLOP_KEYS = ("budgets", "params")

EVALS_PER_RUN = 8  # target evaluations per run when eval_interval is "auto" (the rule gives 5 to 9)
CHECKPOINTS_PER_RUN = 3  # checkpoints per run when checkpoint_interval is "auto"
MIN_STEPS_WARNING = 20  # runs shorter than this many optimizer steps get a warning: their schedule is mostly warmup
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DataSpec:
    """The corpus of the sweep; prepared with scaling.data.prepare under RUNS/_data when missing."""

    source: str = "python-stdlib"  # python-stdlib, a text file, a folder, a glob or a .jsonl file
    tokenizer: str = "bytes"  # "bytes" or "bpe"
    vocab_size: int = 4096  # BPE vocabulary size in tokens (ignored for bytes, whose vocabulary is fixed)
    text_field: str = "text"  # JSONL field that contains the text
    val_fraction: float = 0.05  # share of documents held out for validation


@dataclass(frozen=True)
class ModelSpec:
    """The model family: fixed ModelConfig fields, and how the size ladder shapes each N."""

    convention: str = "total"  # parameter convention of the sizes in the spec: "total" or "non_embedding"
    aspect_ratio: float = DEFAULT_ASPECT_RATIO  # d_model / n_layers the ladder aims for
    head_dim: int = DEFAULT_HEAD_DIM  # width of one attention head; d_model is a multiple of it
    query_heads_per_kv: int = 1  # query heads sharing one key/value head (grouped-query); 1 is multi-head
    fields: dict[str, Any] = field(default_factory=dict)  # other ModelConfig fields (norm, mlp, positions, ...)


@dataclass(frozen=True)
class TrainSpec:
    """Training settings shared by every run; None intervals follow the rule in `run_intervals`."""

    seq_len: int = 128  # tokens per training sequence
    batch_size: int = 16  # sequences per optimizer step
    eval_tokens: int = 32768  # validation tokens scored at each evaluation
    eval_interval: int | None = None  # optimizer steps between evaluations; None ("auto") scales with the run
    log_interval: int = 10  # optimizer steps between metric rows (shortened for short runs)
    checkpoint_interval: int | None = None  # optimizer steps between checkpoints; None ("auto") scales with the run
    keep_checkpoints: int = 2  # checkpoints kept on disk per run
    seed: int = 0  # initialisation and data-order seed, the same for every run of the sweep
    wandb_mode: str = "auto"  # "online", "offline", "disabled" or "auto"
    wandb_project: str = "scaling"
    max_epochs: float | None = None  # refuse runs whose D exceeds this many passes over the corpus; None allows any
    mesh: str = ""  # device layout of every run (TrainConfig.mesh): "data=N", "fsdp=N", "fsdp", or "" for the default

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


@dataclass(frozen=True)
class GridSpec:
    """Every size in `params` trained on every token budget in `tokens`."""

    params: tuple[float, ...]  # target parameter counts N (in the model convention)
    tokens: tuple[float, ...]  # token budgets D


@dataclass(frozen=True)
class IsoflopSpec:
    """For each FLOP budget, the sizes trained on that budget."""

    params_by_budget: dict[float, tuple[float, ...]]  # budget C (FLOPs) -> target parameter counts N

    @property
    def budgets(self) -> tuple[float, ...]:
        return tuple(sorted(self.params_by_budget))


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep spec."""

    name: str  # the sweep: folder RUNS/<name>/ and the W&B group
    data: DataSpec
    model: ModelSpec
    optimizer: OptimizerConfig
    train: TrainSpec
    flops_per_token: str = "6N_total"  # FLOPs-per-token convention for D = C / F(N) and for every C shown
    grid: GridSpec | None = None
    isoflop: IsoflopSpec | None = None
    description: str = ""
    origin: str = "<spec>"  # the file it came from, for messages
    resources: dict[str, Any] = field(default_factory=dict)  # per-run cpus and gpus for Ray and SLURM (sweeps.backends)
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit options of --backend slurm (sweeps.backend_slurm)

    @property
    def kind(self) -> str:
        return "isoflop" if self.isoflop is not None else "grid"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep, fully resolved: its TrainConfig and the quantities a scaling study reads."""

    run_id: str  # e.g. C1e13-N3.2e5 (IsoFLOP) or N3.2e5-D1e7 (grid)
    config: TrainConfig
    target_params: float  # N asked for in the spec, in the model convention
    params_total: int  # N of the chosen shape, every parameter
    params_non_embedding: int  # N of the chosen shape, attention and MLP matrices only
    tokens: int  # D actually trained: whole batches
    flops: float  # C of the trained tokens, in the spec's flops_per_token convention
    flops_per_token: int  # F(N) in that convention
    budget: float | None  # the IsoFLOP budget C this run belongs to; None for grid runs
    tokens_target: float | None = None  # D the spec requests (C / F(N) on an IsoFLOP grid), before whole batches

    @property
    def steps(self) -> int:
        return self.config.total_steps

    @property
    def shape(self) -> str:
        return describe(self.config.model)


def load_spec(path_or_name: str | Path) -> SweepSpec:
    """Read a spec from a YAML file, or a packaged one by bare name ("demo" -> sweeps/specs/demo.yaml)."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        raise UserError(f"sweep spec {str(path_or_name)!r} is a folder; give the spec's YAML file (a sweep's run "
                        f"folder does not hold it), or one of: {', '.join(packaged_specs())}")
    if not path.is_file():
        packaged = SPECS_DIR / f"{path_or_name}.yaml"
        if str(path_or_name) and "/" not in str(path_or_name) and packaged.exists():
            path = packaged
        else:
            raise UserError(
                f"sweep spec {str(path_or_name)!r} is neither a file nor a packaged spec; "
                f"give a YAML path or one of: {', '.join(packaged_specs())}"
            )
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"sweep spec {path} is not valid YAML: {yaml_problem(error)}") from None
    except OSError as error:
        raise UserError(f"cannot read sweep spec {path}: {error.strerror}; check the path") from None
    if raw is None:
        raise UserError(f"sweep spec {path} is empty; start from one of: {', '.join(packaged_specs())}")
    return parse_spec(raw, origin=str(path))


def packaged_specs() -> list[str]:
    """Return the names of the specs shipped in sweeps/specs/."""
    return sorted(path.stem for path in SPECS_DIR.glob("*.yaml"))


def parse_spec(raw: Any, origin: str = "<spec>") -> SweepSpec:
    """Validate a spec given as nested dicts (parsed YAML); every mistake raises a one-line UserError."""
    try:
        return _parse(raw, origin)
    except UserError as error:
        raise UserError(f"sweep spec {origin}: {error}") from None


RUN_CONFIG_KEYS = frozenset({"run_id", "tokens", "seed"})  # top-level keys of one run's config, not of a spec


def _parse(raw: Any, origin: str) -> SweepSpec:
    run_keys = sorted(RUN_CONFIG_KEYS & set(raw)) if isinstance(raw, dict) else []
    if run_keys and not {"grid", "isoflop"} & set(raw):
        raise UserError(f"this is one run's config (it has {', '.join(key + ':' for key in run_keys)}), not a sweep "
                        f"spec; train it with "
                        f"`scaling train {origin}`, or describe a sweep with grid: or isoflop: (see sweeps/specs/)")
    top = _mapping(raw, "the spec", TOP_KEYS)
    name = top.get("name")
    if name is None:
        raise UserError("the spec has no name:; add one, e.g. name: my-sweep (runs go to RUNS/<name>/)")
    if not isinstance(name, str) or not _SWEEP_NAME.match(name):
        raise UserError(
            f"name={name!r} must be a folder-safe sweep name (letters, digits, '.', '_', '-', not starting "
            "with '_' or '.'); e.g. name: my-sweep"
        )
    if ("grid" in top) == ("isoflop" in top):
        raise UserError("give exactly one of 'grid: {params, tokens}' or 'isoflop: {budgets, params}'")
    flops_convention = top.get("flops_per_token", "6N_total")
    if flops_convention not in FLOPS_CONVENTIONS:
        raise UserError(f"flops_per_token={flops_convention!r} is not one of: {', '.join(FLOPS_CONVENTIONS)}")
    description = top.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"description={description!r} must be a string; quote it in the YAML")

    optimizer_raw = _mapping(top.get("optimizer", {}), "optimizer", _field_names(OptimizerConfig))
    _coerce_fields(OptimizerConfig, optimizer_raw, "optimizer")
    spec = SweepSpec(
        name=name,
        data=_parse_data(top.get("data", {})),
        model=_parse_model(top.get("model", {})),
        optimizer=OptimizerConfig(**optimizer_raw),
        train=_parse_train(top.get("train", {})),
        flops_per_token=flops_convention,
        grid=_parse_grid(top["grid"]) if "grid" in top else None,
        isoflop=_parse_isoflop(top["isoflop"]) if "isoflop" in top else None,
        description=description.strip(),
        origin=origin,
        resources=_backend_mapping(top, "resources"),
        slurm=_backend_mapping(top, "slurm"),
    )
    _check_unique_ids(spec)
    if spec.grid is not None:
        _check_grid_tokens(spec.grid, spec.train)
    return spec


def _check_grid_tokens(grid: GridSpec, train: TrainSpec) -> None:
    """Raise UserError for a grid token count below one batch, as for an IsoFLOP budget that gives one.

    Rounding it up to a whole batch would train a run on another D than the spec requests.
    """
    for index, tokens in enumerate(grid.tokens):
        if tokens < train.tokens_per_step:
            raise UserError(
                f"grid.tokens[{index}]={tokens:g} is less than one batch of {train.tokens_per_step} tokens "
                f"(train.seq_len {train.seq_len} x train.batch_size {train.batch_size}); use at least "
                f"{train.tokens_per_step} tokens, or shrink train.batch_size * train.seq_len"
            )


def _backend_mapping(top: dict[str, Any], key: str) -> dict[str, Any]:
    """Return the spec's `resources:` or `slurm:` mapping, validated by the backend module that reads it."""
    from sweeps.backend_slurm import SlurmOptions
    from sweeps.backends import RESOURCE_KEYS, RunResources

    if key == "resources":
        raw = _mapping(top.get(key, {}), key, RESOURCE_KEYS)
        RunResources.from_mapping(raw)
    else:
        raw = _mapping(top.get(key, {}), key, {f.name for f in dataclasses.fields(SlurmOptions)})
        SlurmOptions.from_mapping(raw)
    return raw


QUOTED_CHARS = 80  # how much of a value that is not a mapping an error quotes


def _mapping(raw: Any, where: str, known: tuple[str, ...] | set[str]) -> dict[str, Any]:
    """Return `raw` as a dict after checking it is a mapping whose keys are all in `known`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        quoted = repr(raw)
        if len(quoted) > QUOTED_CHARS:  # a whole CSV file given as a spec, say
            quoted = quoted[:QUOTED_CHARS] + "..."
        raise UserError(f"{where} must be a mapping of keys to values, got {quoted}")
    for key in raw:
        if key not in known:
            raise UserError(f"unknown key {key!r} in {where}; known keys are: {', '.join(sorted(known))}")
    return dict(raw)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _parse_data(raw: Any) -> DataSpec:
    values = _mapping(raw, "data", DATA_KEYS)
    if "vocab_size" in values:
        values["vocab_size"] = _integer(values["vocab_size"], "data.vocab_size")
    if "val_fraction" in values:
        fraction = parse_number(values["val_fraction"], "data.val_fraction")
        if not 0 < fraction < 1:
            raise UserError(f"data.val_fraction={values['val_fraction']!r} must lie between 0 and 1, e.g. 0.05")
        values["val_fraction"] = fraction
    for key in ("source", "tokenizer", "text_field"):
        if key in values and not isinstance(values[key], str):
            raise UserError(f"data.{key}={values[key]!r} must be a string; quote it in the YAML")
    if values.get("tokenizer", "bytes") not in ("bytes", "bpe"):
        raise UserError(f"data.tokenizer={values['tokenizer']!r} is not one of: bytes, bpe")
    return DataSpec(**values)


def _parse_model(raw: Any) -> ModelSpec:
    ladder_fields = set(_field_names(ModelConfig)) - set(SHAPE_FIELDS)
    values = _mapping(raw, "model", set(LADDER_KEYS) | set(SHAPE_FIELDS) | ladder_fields)
    for key in SHAPE_FIELDS:
        if key in values:
            fix = ("it comes from the prepared corpus (set data.vocab_size for BPE)" if key == "vocab_size"
                   else "each size's shape comes from the size ladder (steer it with aspect_ratio or head_dim)")
            raise UserError(f"model.{key}={values[key]!r} cannot be set in a sweep: {fix}; remove it")
    convention = values.pop("convention", "total")
    if convention not in PARAM_CONVENTIONS:
        raise UserError(f"model.convention={convention!r} is not one of: {', '.join(PARAM_CONVENTIONS)}")
    aspect_ratio = parse_count(values.pop("aspect_ratio", DEFAULT_ASPECT_RATIO), "model.aspect_ratio")
    head_dim = _integer(values.pop("head_dim", DEFAULT_HEAD_DIM), "model.head_dim")
    query_heads_per_kv = _integer(values.pop("query_heads_per_kv", 1), "model.query_heads_per_kv")
    _coerce_fields(ModelConfig, values, "model")
    ModelConfig(**values)  # reject bad field values now, with ModelConfig's own messages
    if head_dim % 2 and values.get("positions", "rope") == "rope":  # every shape of the ladder would fail later
        raise UserError(f"model.head_dim={head_dim} is odd; RoPE needs an even head_dim, e.g. {head_dim + 1}")
    return ModelSpec(convention=convention, aspect_ratio=aspect_ratio, head_dim=head_dim,
                     query_heads_per_kv=query_heads_per_kv, fields=values)


def _parse_train(raw: Any) -> TrainSpec:
    values = _mapping(raw, "train", TRAIN_KEYS)
    for key in ("seq_len", "batch_size", "eval_tokens", "log_interval", "keep_checkpoints"):
        if key in values:
            values[key] = _integer(values[key], f"train.{key}")
    for key in ("eval_interval", "checkpoint_interval"):
        if key in values:
            values[key] = None if values[key] == "auto" else _integer(values[key], f"train.{key}")
    if "seed" in values:
        seed = values["seed"]
        number = parse_number(seed, "train.seed") if isinstance(seed, str) else seed
        if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0 or number != int(number):
            raise UserError(f"train.seed={seed!r} must be an integer >= 0")
        values["seed"] = int(number)
    if "max_epochs" in values and values["max_epochs"] is not None:
        values["max_epochs"] = _number(values["max_epochs"], "train.max_epochs", integer=False)
    if "wandb_project" in values and not isinstance(values["wandb_project"], str):
        raise UserError(f"train.wandb_project={values['wandb_project']!r} must be a string; quote it in the YAML")
    if "wandb_mode" in values and values["wandb_mode"] not in WANDB_MODES:
        # YAML reads an unquoted off or no as False, so the spec key and the choices are named together here.
        value = values["wandb_mode"]
        read_as = " (YAML reads an unquoted off or no as false)" if isinstance(value, bool) else ""
        raise UserError(f"train.wandb_mode={value!r}{read_as} is not one of: {', '.join(WANDB_MODES)}; use "
                        "disabled to turn W&B off")
    if "mesh" in values:
        if values["mesh"] is None:  # `mesh:` with no value in the YAML
            values["mesh"] = ""
        check_mesh(values["mesh"], values.get("batch_size", TrainSpec.batch_size), name="train.mesh",
                   batch_name="train.batch_size")
    return TrainSpec(**values)


def _coerce_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """Convert spec values in place to the type of each dataclass field's default (float, int, bool, str).

    PyYAML reads `3e-3` as a string (its float syntax needs a decimal point), so numbers are parsed here.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in values.items():
        default = defaults[key]
        if isinstance(default, bool) or isinstance(default, str):
            if type(value) is not type(default):
                raise UserError(f"{where}.{key}={value!r} must be a {type(default).__name__}")
        elif isinstance(default, (int, float)):
            values[key] = _number(value, f"{where}.{key}", integer=isinstance(default, int))


def _number(value: Any, where: str, integer: bool) -> int | float:
    """Return a number written as a YAML number or a string like "3e-4" or "2M"; zero and negatives are
    left to the config's own checks."""
    number = parse_number(value, where)
    if integer:
        if number != int(number):
            raise UserError(f"{where}={value!r} must be a whole number")
        return int(number)
    return number


def _integer(value: Any, where: str) -> int:
    """Return a positive whole count (a plain int, or a string like "32K"); reject fractions."""
    number = parse_count(value, where)
    if number != int(number):
        raise UserError(f"{where}={value!r} must be a whole number")
    return int(number)


def _count_list(raw: Any, where: str) -> tuple[float, ...]:
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where} must be a non-empty list of counts, e.g. [1e5, 3e5, 1M]; got {raw!r}")
    return tuple(parse_count(value, f"{where}[{index}]") for index, value in enumerate(raw))


def _parse_grid(raw: Any) -> GridSpec:
    values = _mapping(raw, "grid", GRID_KEYS)
    for key in GRID_KEYS:
        if key not in values:
            raise UserError(f"grid needs '{key}', a list of counts; e.g. grid: {{params: [1e5, 1e6], tokens: [1e7]}}")
    return GridSpec(params=_count_list(values["params"], "grid.params"),
                    tokens=_count_list(values["tokens"], "grid.tokens"))


def _parse_isoflop(raw: Any) -> IsoflopSpec:
    values = _mapping(raw, "isoflop", ISOFLOP_KEYS)
    if "params" not in values:
        raise UserError("isoflop needs 'params': one list of sizes for every budget, or a mapping budget -> list")
    params = values["params"]
    if isinstance(params, dict):
        by_budget: dict[float, tuple[float, ...]] = {}
        for key, sizes in params.items():
            budget = parse_count(key, f"isoflop.params key {key!r}")
            if budget in by_budget:
                raise UserError(f"isoflop.params names budget {key!r} twice; merge its size lists")
            by_budget[budget] = _count_list(sizes, f"isoflop.params[{key}]")
        if "budgets" in values:
            listed = _count_list(values["budgets"], "isoflop.budgets")
            missing = [b for b in listed if b not in by_budget]
            extra = [b for b in by_budget if b not in listed]
            if missing or extra:
                odd = format_count((missing or extra)[0])
                raise UserError(
                    f"isoflop budget {odd} is in {'budgets' if missing else 'params'} but not in "
                    f"{'params' if missing else 'budgets'}; list the same budgets in both, or drop 'budgets'"
                )
        return IsoflopSpec(params_by_budget=by_budget)
    if "budgets" not in values:
        raise UserError("isoflop needs 'budgets', a list of FLOP budgets such as [1e12, 3e12]")
    budgets = _count_list(values["budgets"], "isoflop.budgets")
    sizes = _count_list(params, "isoflop.params")
    by_budget = {}
    for budget in budgets:
        if budget in by_budget:
            raise UserError(f"isoflop.budgets lists {format_count(budget)} twice; remove the duplicate")
        by_budget[budget] = sizes
    return IsoflopSpec(params_by_budget=by_budget)


def isoflop_run_id(budget: float, params: float) -> str:
    return f"C{format_count(budget)}-N{format_count(params)}"


def grid_run_id(params: float, tokens: float) -> str:
    return f"N{format_count(params)}-D{format_count(tokens)}"


def _run_points(spec: SweepSpec) -> list[tuple[str, float, float | None, float | None]]:
    """Return (run_id, target N, budget C or None, tokens D or None) for every run, in a fixed order:
    budgets then sizes ascending (IsoFLOP), sizes then token budgets ascending (grid)."""
    if spec.isoflop is not None:
        return [(isoflop_run_id(budget, n), n, budget, None)
                for budget in spec.isoflop.budgets for n in sorted(spec.isoflop.params_by_budget[budget])]
    assert spec.grid is not None
    return [(grid_run_id(n, d), n, None, d) for n in sorted(spec.grid.params) for d in sorted(spec.grid.tokens)]


def _check_unique_ids(spec: SweepSpec) -> None:
    seen: dict[str, tuple[float, float | None, float | None]] = {}
    for run_id, n, budget, tokens in _run_points(spec):
        if run_id in seen:
            first_n, _, first_d = seen[run_id]
            if tokens is None:
                entries = f"params {first_n:g} and {n:g} under budget {format_count(budget or 0)}"
            else:
                entries = f"params {first_n:g} and {n:g} with tokens {first_d:g} and {tokens:g}"
            raise UserError(f"duplicate run {run_id}: {entries} give the same run; remove one of them")
        seen[run_id] = (n, budget, tokens)


def run_intervals(steps: int, train: TrainSpec) -> tuple[int, int, int]:
    """Return (log_interval, eval_interval, checkpoint_interval) in optimizer steps for a run of `steps`.

    The rule, for "auto" intervals:
    - log every min(train.log_interval, steps // 8) steps (at least 1), so short runs still log 8 rows;
    - evaluate every k log intervals, k = ceil(steps / (8 * log_interval)): the eval interval is the smallest
      multiple of the log interval that is at least steps / 8, and because the log interval is at most
      steps / 8 it is below steps / 4, so a run evaluates 5 to 9 times, its last step included;
    - checkpoint every ceil(steps / 3) steps: three checkpoints, the last at the final step.
    The trainer evaluates only on logging steps, so an explicit eval_interval shrinks the log interval to a
    divisor of it.
    """
    log_every = max(1, min(train.log_interval, steps // EVALS_PER_RUN))
    if train.eval_interval is None:
        eval_every = log_every * max(1, math.ceil(steps / (EVALS_PER_RUN * log_every)))
    else:
        eval_every = train.eval_interval
        log_every = math.gcd(log_every, eval_every)
    checkpoint_every = train.checkpoint_interval or max(1, math.ceil(steps / CHECKPOINTS_PER_RUN))
    return log_every, eval_every, checkpoint_every


@dataclass(frozen=True)
class PreparedData:
    """The corpus folder of a sweep and its meta.json."""

    path: Path
    meta: dict[str, Any]


def prepare_data(spec: SweepSpec, runs_root: str | Path | None, *, progress: bool = False) -> PreparedData:
    """Prepare the spec's corpus under RUNS/_data (tokenizing it if missing or stale) and return it."""
    from scaling.data import default_data_dir, prepare

    data = spec.data
    folder = default_data_dir(data.source, data.tokenizer, data.vocab_size, resolve_runs_root(runs_root),
                              val_fraction=data.val_fraction, text_field=data.text_field)
    meta = prepare(data.source, folder, tokenizer=data.tokenizer, vocab_size=data.vocab_size,
                   text_field=data.text_field, val_fraction=data.val_fraction, progress=progress)
    return PreparedData(path=folder, meta=meta)


def expand(spec: SweepSpec, runs_root: str | Path | None = None, *, progress: bool = False,
           data: PreparedData | None = None) -> list[PlannedRun]:
    """Return every run of the sweep with its full TrainConfig, after preparing the corpus if needed.

    Each config is validated here (TrainConfig raises UserError), so a bad run stops the sweep before any
    run starts. Two sizes that the ladder maps to one shape under the same budget (IsoFLOP) or token
    budget (grid) are one run twice, and raise UserError too.
    """
    data = data or prepare_data(spec, runs_root, progress=progress)
    try:
        runs = _expand(spec, data)
    except UserError as error:
        raise UserError(f"sweep {spec.name}: {error}") from None
    from scaling.data import check_epochs

    for run in runs:
        check_epochs(run.run_id, run.tokens, data.meta, spec.train.max_epochs, key="train.max_epochs")
        if run.steps < MIN_STEPS_WARNING:
            log.warning("run %s has only %d optimizer steps; its warmup and decay are coarse", run.run_id, run.steps)
    warn_sizes_beyond_memory(runs)
    return runs


FAR_FROM_TARGET = 2.0  # a built model this many times larger or smaller than the size asked for draws a warning
TOO_FAR_FROM_TARGET = 10.0  # and this many times is refused: its runs would carry the wrong N in their ids


def _warn_far_from_target(target: float, model: ModelConfig, convention: str) -> None:
    """Warn when the shape the ladder builds for `target` has far more or fewer parameters than requested.
    Raise UserError beyond TOO_FAR_FROM_TARGET, because such a size is a typo rather than a rounding."""
    built = parameter_counts(model)["total" if convention == "total" else "non_embedding"]
    if built > TOO_FAR_FROM_TARGET * target or built * TOO_FAR_FROM_TARGET < target:
        hint = " (a suffix left out, K for thousands?)" if built > target else ""
        ratio = built / target
        times = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2g}"
        raise UserError(f"model size {format_count(target)}: the nearest shape the ladder builds, {describe(model)}, "
                        f"is {times} times the size asked for{hint}; ask for sizes within {TOO_FAR_FROM_TARGET:g} "
                        "times of what the ladder builds")
    if built > FAR_FROM_TARGET * target or built * FAR_FROM_TARGET < target:
        log.warning("model size %s: the nearest shape the ladder builds is %s, %.3g times the size asked for, and "
                    "its runs train that shape; ask for sizes nearer to it", format_count(target), describe(model),
                    built / target)


def sizes_beyond_memory(runs: list[PlannedRun]) -> dict[float, tuple[int, list[PlannedRun]]]:
    """Return {target size: (bytes needed, its runs)} for each model size whose training needs more memory
    than this machine's RAM in all. The need is a lower estimate (scaling.machine_memory.train_step_bytes),
    so such a size cannot train on this machine."""
    from scaling.machine_memory import host_memory, train_step_bytes

    total = host_memory().total
    by_size: dict[float, list[PlannedRun]] = {}
    for run in runs:
        by_size.setdefault(run.target_params, []).append(run)
    needs = {target: (train_step_bytes(sized[0].config), sized) for target, sized in by_size.items()}
    return {target: (needed, sized) for target, (needed, sized) in needs.items() if needed > total}


def warn_sizes_beyond_memory(runs: list[PlannedRun]) -> list[float]:
    """Log a warning for each model size of `sizes_beyond_memory`; return those sizes.

    The warning appears in `scaling sweep plan` and before a launch on any backend. The local backend then
    stops (sweeps.launcher.run_sweep), since its workers run on this machine.
    """
    from scaling.machine_memory import format_bytes, host_memory

    total = host_memory().total
    too_large = []
    for target, (needed, sized) in sizes_beyond_memory(runs).items():
        too_large.append(target)
        more = f" and {len(sized) - 3} more" if len(sized) > 3 else ""
        log.warning(
            "model size %s (%s parameters in total; runs %s%s) needs at least %s of memory to train, more "
            "than this machine's %s of RAM, so it cannot train here: drop the size, or launch it on machines "
            "with more memory (--backend ray or slurm)",
            format_count(target), format_count(sized[0].params_total), ", ".join(run.run_id for run in sized[:3]),
            more, format_bytes(needed), format_bytes(total),
        )
    return too_large


def _expand(spec: SweepSpec, data: PreparedData) -> list[PlannedRun]:
    train = spec.train
    vocab_size = int(data.meta["vocab_size"])
    model_fields = {"max_seq_len": train.seq_len, **spec.model.fields, "vocab_size": vocab_size}
    group = spec.model.query_heads_per_kv
    if group > 1:  # the ladder keeps the base's n_heads / n_kv_heads wherever it divides a shape's heads
        model_fields.update(d_model=group * spec.model.head_dim, n_heads=group, n_kv_heads=1)
    base = ModelConfig(**model_fields)
    shapes: dict[float, ModelConfig] = {}
    runs: list[PlannedRun] = []
    seen: dict[tuple[str, float], str] = {}  # (shape, budget or tokens) -> run id, to find one run listed twice

    for run_id, target, budget, tokens_target in _run_points(spec):
        if target not in shapes:
            shapes[target] = model_for_params(target, base, convention=spec.model.convention,
                                              aspect_ratio=spec.model.aspect_ratio, head_dim=spec.model.head_dim)
            _warn_far_from_target(target, shapes[target], spec.model.convention)
            if group > 1 and shapes[target].kv_heads == shapes[target].n_heads:
                log.warning("model size %s: its shape has %d heads, not a multiple of model.query_heads_per_kv=%d, "
                            "so it uses multi-head attention", format_count(target), shapes[target].n_heads, group)
        model = shapes[target]
        per_token = training_flops_per_token(model, train.seq_len)[spec.flops_per_token]
        if budget is not None:
            tokens_target = budget / per_token
            if tokens_target < train.tokens_per_step:
                raise UserError(
                    f"run {run_id}: budget C={format_count(budget)} gives D={tokens_target:.0f} tokens for "
                    f"{describe(model)}, less than one batch of {train.tokens_per_step} tokens; raise the budget, "
                    "drop this size, or shrink train.batch_size * train.seq_len"
                )
        assert tokens_target is not None
        # Whole batches only: round to the nearest batch so C stays within half a batch of the budget.
        steps = max(1, round(tokens_target / train.tokens_per_step))
        key = (json.dumps(dataclasses.asdict(model), sort_keys=True), budget if budget is not None else tokens_target)
        if key in seen:
            raise UserError(
                f"duplicate run: {seen[key]} and {run_id} both give {describe(model)}; "
                "drop one size or space the sizes further apart"
            )
        seen[key] = run_id

        log_every, eval_every, checkpoint_every = run_intervals(steps, train)
        try:
            config = TrainConfig(
                model=model,
                optimizer=spec.optimizer,
                data=DataConfig(path=str(data.path), seq_len=train.seq_len, batch_size=train.batch_size,
                                eval_tokens=train.eval_tokens),
                tokens=steps * train.tokens_per_step,
                seed=train.seed,
                run_id=run_id,
                sweep=spec.name,
                flop_budget=budget,
                eval_interval=eval_every,
                log_interval=log_every,
                checkpoint_interval=checkpoint_every,
                keep_checkpoints=train.keep_checkpoints,
                wandb_mode=train.wandb_mode,
                wandb_project=train.wandb_project,
                max_epochs=train.max_epochs,
                mesh=train.mesh,
            )
        except UserError as error:
            raise UserError(f"run {run_id}: {error}") from None
        counts = parameter_counts(model)
        runs.append(PlannedRun(
            run_id=run_id,
            config=config,
            target_params=target,
            params_total=counts["total"],
            params_non_embedding=counts["non_embedding"],
            tokens=config.tokens_trained,
            flops=float(per_token) * config.tokens_trained,
            flops_per_token=per_token,
            budget=budget,
            tokens_target=float(tokens_target),
        ))
    return runs
