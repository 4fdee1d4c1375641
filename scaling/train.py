"""Train one run: a decoder of N parameters on D tokens, written to its run directory.

The flow of `train(config)`:
1. open `RUNS/<sweep>/<run_id>/`, record config.json, and skip the run if it already completed;
2. build the model, AdamW and a device mesh (one device is a mesh of one), then restore the newest
   checkpoint or initialise;
3. run the jit-compiled step with the state donated. It compiles once per shape: a worker process keeps the
   compiled programs of its last few shapes (`trainer_for`) for later runs that differ only in budget or
   seed. The host reads metrics back only every `log_interval` steps and at checkpoint steps, and evaluates
   and checkpoints at fixed intervals. A non-finite loss stops the run with status `diverged` and the first
   bad step. A first SIGINT or SIGTERM ends the step in flight and checkpoints it, with status
   `interrupted`;
4. evaluate at the end and write summary.json with the final validation loss, the run's L(N, D) point.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import signal
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta
from jax.sharding import NamedSharding, PartitionSpec

from models.attention import batch_split_over, training_attention
from models.initializers import draw_params, parameter_initializers
from models.transformer import Transformer, next_token_loss, token_nats
from scaling.accelerators import devices_peak_flops
from scaling.accounting import parameter_counts, training_flops_per_token
from scaling.checkpoint import Checkpointer
from scaling.config import PROGRAMS_KEPT, TrainConfig, clipped_warmup, program_identity
from scaling.batches import batch_at, predicted_bytes, validation_windows
from scaling.data import PreparedCorpus, check_epochs
from scaling.errors import UserError
from scaling.host_memory import estimated_step_temp_bytes, keep_freed_memory, release_freed_memory
from scaling.interrupts import stop_after_step, stop_requested, stop_signals_deferred
from scaling.paths import runs_root as resolve_runs_root
from scaling.run_checks import corpus_size_problem, folder_conflict
from scaling.run_lock import RunLock
from scaling.run_store import RunDir, initial_summary
from scaling.schedule import schedule_values, scheduled_lr
from scaling.sharding import (DATA_AXIS, check_batch_divides, initialize_distributed, is_primary, make_mesh,
                              put_array, put_batch, resolve_plan, state_shardings, stop_agreed)
from scaling.tracking import Tracker

log = logging.getLogger(__name__)

ROUNDED_TOKENS_NOTED = 0.01  # a config whose whole batches fall this far short of its tokens gets a warning

FAULT_ENV = "SCALING_FAULT"
FAULT_POINTS = ("step", "checkpoint", "eval", "nan", "signal")


def fault_from_env() -> tuple[str, int] | None:
    """Return the fault a test asked for in SCALING_FAULT="<point>:<step>", or None when it is unset.

    Test-only: tests/faults.py sets it, and docs/reliability.md lists the points. Steps count from 1.
    - `step` kills the process by SIGKILL right after optimizer step `step` is dispatched;
    - `checkpoint` kills it right after the checkpoint write of that step has started;
    - `eval` kills it after the first validation chunk of that step is dispatched;
    - `nan` makes the parameters NaN before that step, so its loss is NaN;
    - `signal` sends this process SIGINT right after step `step` is dispatched, as Ctrl-C would.
    `step` and `eval` first let earlier checkpoint writes finish, so each point tests one thing. When the
    variable is unset, the loop compares one tuple per step and nothing else.
    """
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    point, _, step = raw.partition(":")
    if point not in FAULT_POINTS or not step.isdigit():
        raise ValueError(f"{FAULT_ENV}={raw!r} is not <point>:<step> with point one of {', '.join(FAULT_POINTS)}")
    return point, int(step)


def _kill_self() -> None:
    """SIGKILL this process (the fault hook)."""
    os.kill(os.getpid(), signal.SIGKILL)


def enable_compilation_cache(runs_root: Path) -> None:
    """Keep compiled programs under RUNS/_jax_cache so a rerun or a same-shaped run skips compilation."""
    cache_dir = os.environ.get("SCALING_JAX_CACHE", str(Path(runs_root) / "_jax_cache"))
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_record(config: TrainConfig, corpus_meta: dict[str, Any]) -> dict[str, Any]:
    """Return config.json's content: the config, corpus, parameter and FLOP accounting, and versions."""
    params = parameter_counts(config.model)
    flops_per_token = training_flops_per_token(config.model, config.data.seq_len)
    tokens = config.tokens_trained
    return {
        "run_id": config.run_id,
        "sweep": config.sweep,
        "config": config.to_dict(),
        "corpus": corpus_meta,
        "params": params,
        "flops_per_token": flops_per_token,
        "tokens_planned": config.tokens,
        "tokens": tokens,
        "steps": config.total_steps,
        # The schedule as trained: a warmup longer than a fifth of the run is clipped (scaling.schedule).
        "warmup_steps_used": clipped_warmup(config.optimizer.warmup_steps, config.total_steps),
        "flops": {
            "6ND_total": 6 * params["total"] * tokens,
            "6ND_non_embedding": 6 * params["non_embedding"] * tokens,
            "exact": flops_per_token["exact"] * tokens,
        },
        "code_version": code_version(),
        "software": software_versions(),
    }


def code_version() -> str:
    """Return the git commit of this project's checkout, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def software_versions() -> dict[str, str]:
    import flax
    import orbax.checkpoint

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax-checkpoint": getattr(orbax.checkpoint, "__version__", "unknown"),
        "backend": jax.default_backend(),
    }


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Return gradient clipping, Adam moments and decoupled weight decay; the learning rate is applied in
    the step, from the schedule values passed as arguments.

    Weight decay applies to matrices only (ndim >= 2), not to norm scales.
    """
    opt = config.optimizer
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.scale_by_adam(b1=opt.beta1, b2=opt.beta2, eps=opt.eps))
    if opt.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    return optax.chain(*parts)


class Trainer:
    """The compiled pieces of one run: model, optimizer, mesh, and the step and eval functions.

    The layout over devices comes from `config.mesh` ("data=4", "fsdp=4"), then $SCALING_MESH, then data
    parallelism over all of `devices` (default: every device).
    """

    def __init__(self, config: TrainConfig, devices: list | None = None):
        self.config = config
        self.model = Transformer(config.model)
        self.optimizer = make_optimizer(config)
        self.plan = resolve_plan(config.mesh)
        self.mesh = make_mesh(self.plan, devices)
        check_batch_divides(config.data.batch_size, self.mesh)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.schedule_kind = config.optimizer.schedule
        self.fsdp = self.plan.fsdp and self.mesh.size > 1
        # Without FSDP one replicated sharding covers the whole state, the program every run had before meshes.
        self.state_sharding = (state_shardings(self._state_shapes(), self.mesh, self.fsdp) if self.fsdp
                               else self.replicated)
        self.params_sharding = self.state_sharding["params"] if self.fsdp else self.replicated

        self.step_fn = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=(0,),
        )
        self.eval_fn = jax.jit(
            self._eval_nats,
            in_shardings=(self.params_sharding, self.batch_sharding, self.batch_sharding),
            out_shardings=self.replicated,
        )
        # The parameters are drawn on the host by a program that every shape shares (models/initializers.py).
        # So the optimizer's state is the only initialisation program compiled per shape.
        self.opt_init_fn = jax.jit(self.optimizer.init,
                                   out_shardings=self.state_sharding["opt_state"] if self.fsdp else self.replicated)

    @functools.cached_property
    def param_initializers(self) -> dict[str, Any]:
        """The model's parameters (shapes and dtypes) with the initializer of each, traced once per Trainer."""
        return parameter_initializers(self.model, jnp.zeros((1, self.config.data.seq_len), jnp.int32))

    @staticmethod
    def _keys(seed):
        return jax.random.split(jax.random.key(seed))

    def _state_shapes(self) -> dict[str, Any]:
        params = meta.unbox(self.param_initializers)
        return {
            "params": params,
            "opt_state": jax.eval_shape(self.optimizer.init, params),
            "step": jax.ShapeDtypeStruct((), jnp.int32),
            "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
        }

    def abstract_state(self) -> dict[str, Any]:
        """Return the state as `init_state` builds it, as shapes, dtypes and shardings only (the restore
        target of a checkpoint); nothing is computed."""
        shapes = self._state_shapes()
        shardings = self.state_sharding if self.fsdp else jax.tree.map(lambda _: self.replicated, shapes)
        return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                            shapes, shardings)

    def init_state(self, seed: int) -> dict[str, Any]:
        """Return the initial state: parameters, optimizer state, step 0 and the RNG key data.

        The parameters depend on the seed and the model's shape only, not on the mesh: every process draws
        all of them on the host and hands its devices their slices.
        """
        init_key, state_key = self._keys(seed)
        host_params = draw_params(self.param_initializers, init_key)
        shardings = self.params_sharding if self.fsdp else jax.tree.map(lambda _: self.replicated, host_params)
        params = jax.tree.map(put_array, host_params, shardings)
        return {
            "params": params,
            "opt_state": self.opt_init_fn(params),
            "step": put_array(np.zeros((), np.int32), self.replicated),
            "rng": put_array(np.asarray(jax.random.key_data(state_key)), self.replicated),
        }

    def put_batch(self, batch_BxL1: np.ndarray):
        """Return a host batch ready for `step_fn` and `eval_fn` (in several processes, a global array)."""
        return put_batch(batch_BxL1, self.batch_sharding)

    def _train_step(self, state, batch_BxL1, schedule):
        inputs_BxL, targets_BxL = batch_BxL1[:, :-1], batch_BxL1[:, 1:]

        def objective(params):
            if self.fsdp:  # gather the whole parameters for the pass; each device stores only its slice
                params = jax.lax.with_sharding_constraint(params, self.replicated)
            with batch_split_over(self.mesh):
                logits_BxLxV = self.model.apply({"params": params}, inputs_BxL)
            loss, total = next_token_loss(logits_BxLxV, targets_BxL, z_loss=self.config.model.z_loss)
            return total, loss

        (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        if self.fsdp:  # each device keeps the gradient slice of the parameters it stores
            grads = jax.lax.with_sharding_constraint(grads, self.params_sharding)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        lr = scheduled_lr(state["step"], schedule, self.schedule_kind)
        params = jax.tree.map(lambda p, u: p - lr * u, state["params"], updates)
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"train_loss": loss, "grad_norm": grad_norm, "lr": lr}

    def _eval_nats(self, params, windows_BxL1, weights_B):
        """Return the summed nats of predicting every token of the weighted windows."""
        if self.fsdp:
            params = jax.lax.with_sharding_constraint(params, self.replicated)
        with batch_split_over(self.mesh):
            logits_BxLxV = self.model.apply({"params": params}, windows_BxL1[:, :-1])
        nats_BxL, _ = token_nats(logits_BxLxV, windows_BxL1[:, 1:])
        return (nats_BxL.sum(axis=-1) * weights_B).sum()

    def evaluate(self, params, windows: np.ndarray, after_first_chunk=None) -> float:
        """Return the summed nats over all validation windows, in chunks of one training batch.

        `after_first_chunk`, when given, is called once the first chunk is dispatched (the fault hook).
        """
        batch = self.config.data.batch_size
        total = jnp.zeros((), jnp.float32)
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            weights = np.ones(batch, np.float32)
            if len(chunk) < batch:  # pad to the compiled shape; padding rows carry zero weight
                weights[len(chunk) :] = 0.0
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), chunk.shape[1]), chunk.dtype)])
            total = total + self.eval_fn(params, self.put_batch(chunk), self.put_batch(weights))
            if after_first_chunk is not None and start == 0:
                after_first_chunk()
        return float(total)


_trainers: OrderedDict[tuple, Trainer] = OrderedDict()  # the newest PROGRAMS_KEPT, oldest first


def trainer_for(config: TrainConfig) -> Trainer:
    """Return a Trainer for `config`: one this process built for an earlier run of the same program, or a new one.

    Runs that differ only in what the compiled programs take as arguments or never read share the Trainer:
    token budget, seed, schedule values, intervals and ids. So a worker that trains several runs of one shape
    traces and loads its three programs once. The Trainer's `config` is the first such run's.
    """
    key = (program_identity(config), resolve_plan(config.mesh), tuple(jax.devices()))
    trainer = _trainers.pop(key, None)
    if trainer is None:
        trainer = Trainer(config)
    _trainers[key] = trainer  # newest last
    while len(_trainers) > PROGRAMS_KEPT:
        _trainers.popitem(last=False)
    return trainer


def train(config: TrainConfig, runs_root: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or skip if completed) the run `config` describes; return its summary."""
    root = resolve_runs_root(runs_root)
    keep_freed_memory(estimated_step_temp_bytes(config))  # before JAX starts its threads (scaling/host_memory.py)
    initialize_distributed()  # several processes (SLURM, Open MPI, JAX_* variables): before any JAX backend starts
    run_dir = RunDir.at(root, config.sweep, config.run_id)
    _check_same_config(run_dir, config)
    if not is_primary():
        # Process 0 holds the lock and writes the run's files; the others compute and write only their
        # share of each checkpoint (Orbax coordinates that).
        return _train_locked(config.replace(wandb_mode="disabled"), root, _SecondaryRunDir(run_dir.path),
                             progress=False)
    with RunLock(run_dir.path):  # raises RunLocked while another live process trains this run
        return _train_locked(config, root, run_dir, progress)


class _SecondaryRunDir(RunDir):
    """The run folder as processes other than 0 use it: they read its files and write none of them."""

    def write_config(self, record: dict[str, Any]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        pass

    def truncate_metrics_after(self, step: int) -> int:
        return 0

    def write_pending_metrics(self, step: int, steps: list[dict[str, Any]]) -> None:
        pass

    def clear_pending_metrics(self) -> None:
        pass


def _train_locked(config: TrainConfig, root: Path, run_dir: RunDir, progress: bool) -> dict[str, Any]:
    entered = time.time()
    corpus = PreparedCorpus.load(config.data.path)
    # A finished run on another corpus is not this run: skipping it would report its loss as this run's.
    conflict = folder_conflict(run_dir, config, corpus.meta)
    if conflict:
        raise UserError(f"run folder {run_dir.path} contains {conflict}; prepare the original corpus again, "
                        "or choose another run_id or sweep")
    previous = run_dir.summary() if run_dir.summary_path.exists() else None
    if previous and previous.get("status") in ("completed", "diverged"):
        # A diverged run is final too: resuming it would repeat the same steps and diverge again.
        log.info("run %s/%s already %s; skipping", config.sweep, config.run_id, previous["status"])
        return previous

    _check_vocabulary(config, corpus)
    problem = corpus_size_problem(config.data, len(corpus.train), len(corpus.val))
    if problem:
        raise UserError(problem)
    epochs = check_epochs(config.run_id, config.tokens_trained, corpus, config.max_epochs)
    if epochs > 1:
        log.warning(
            "run %s plans %d tokens, %.2f epochs over the %d training tokens of the corpus: it sees data again",
            config.run_id, config.tokens_trained, epochs, len(corpus.train),
        )

    record = run_record(config, corpus.meta)
    if config.tokens_trained < (1 - ROUNDED_TOKENS_NOTED) * config.tokens:
        log.warning("run %s trains on %d of the %d tokens asked: whole batches of %d tokens (batch_size x seq_len)",
                    config.run_id, config.tokens_trained, config.tokens, config.data.tokens_per_step)
    enable_compilation_cache(root)

    trainer = trainer_for(config)
    if run_dir.checkpoint_dir.exists() and not run_dir.checkpoint_dir.is_dir():
        raise UserError(f"{run_dir.checkpoint_dir} is a file, where the run keeps its checkpoints; move it away")
    checkpointer = Checkpointer(run_dir.checkpoint_dir, keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(trainer.abstract_state(), set_aside=True)
    except BaseException:  # a checkpoint of another model: leave the run as it was
        checkpointer.close()
        raise
    if not run_dir.config_path.exists():
        run_dir.write_config(record)
    try:
        if restored is not None:
            start_step, state = restored
            dropped = run_dir.truncate_metrics_after(start_step)
            log.info("run %s resumes from step %d (dropped %d metric rows past it) on %s, %s attention",
                     config.run_id, start_step, dropped, _layout(trainer), training_attention(config.model))
        else:
            start_step, state = 0, trainer.init_state(config.seed)
            run_dir.truncate_metrics_after(-1)
            log.info("run %s starts on %s, %s attention", config.run_id, _layout(trainer),
                     training_attention(config.model))

        tracker = Tracker(
            mode=config.wandb_mode,
            project=config.wandb_project,
            run_id=config.run_id,
            sweep=config.sweep,
            run_dir=run_dir.path,
            config=record,
        )
        if start_step > 0:
            tracker.log_rows(run_dir.metrics())
    except BaseException as error:
        _record_stopped_setup(run_dir, record, previous, error)
        checkpointer.close()
        raise
    started = time.time()
    # A resumed run goes on from the wall time recorded with its newest checkpoint. The summary starts from
    # that point, so an attempt stopped before its own first checkpoint keeps the time and steps done.
    wall_before = ((previous or {}).get("wall_time_s", 0.0) or 0.0) if start_step > 0 else 0.0
    summary = initial_summary(record["run_id"], record["sweep"], status="running")
    summary.update(_progress(record, start_step, config.data.tokens_per_step, wall_before), layout=_layout(trainer))
    run_dir.write_summary(summary)
    run = _Run(config, record, trainer, corpus, run_dir, checkpointer, tracker, wall_before, started,
               setup_s=started - entered)
    try:
        summary = _loop(run, state, start_step, progress)
    except KeyboardInterrupt:
        # Ctrl-C, or a launcher stopping its workers. A first signal in the loop ends the step in flight and
        # checkpoints it (`_checkpoint_interrupted`); a second, or one outside the loop, stops at once. The
        # summary keeps the progress of the newest checkpoint, where the next attempt resumes, and marks the
        # run as no longer live. A signal while this records it waits for it.
        stopped_at = run.position.get("steps_done", start_step)
        try:
            checkpointer.wait()  # a checkpoint still being written counts once it is on disk
        except KeyboardInterrupt:
            pass  # a further signal: record the progress known now
        with stop_signals_deferred():
            recorded = run_dir.summary() or summary
            if run.unrecorded and not checkpointer.saving():
                recorded = {**recorded, **run.unrecorded}
            run_dir.write_summary({**recorded, "status": "interrupted", "interrupted_at_step": stopped_at})
        resumes_at = recorded.get("steps_done") or 0
        log.warning("run %s interrupted after step %d; the next launch %s", config.run_id, stopped_at,
                    f"resumes from step {resumes_at}, its newest checkpoint" if resumes_at else
                    "starts it afresh, since it has no checkpoint yet")
        tracker.finish(exit_code=130)
        checkpointer.close()
        raise
    except BaseException as error:
        summary = {**summary, "status": "failed", "error": f"{type(error).__name__}: {error}",
                   "wall_time_s": run.wall_s()}
        run_dir.write_summary(summary)
        tracker.finish(exit_code=1)
        checkpointer.close()
        raise
    checkpointer.close()
    tracker.summary(summary)
    tracker.finish(exit_code=0 if summary["status"] == "completed" else 1)
    return summary


def _record_stopped_setup(run_dir: RunDir, record: dict[str, Any], previous: dict[str, Any] | None,
                          error: BaseException) -> None:
    """Write summary.json for a run stopped between writing config.json and its first step (state
    initialisation, W&B set-up): "interrupted" for Ctrl-C or SIGTERM, else "failed" with the error. The
    progress of an earlier attempt stays, since its checkpoints do. A run folder with config.json thus
    always has a summary.json."""
    summary = {**(previous or initial_summary(record["run_id"], record["sweep"], status="running"))}
    resumes_at = summary.get("steps_done") or 0
    if isinstance(error, KeyboardInterrupt):
        summary.update(status="interrupted", interrupted_at_step=resumes_at, error=None)
        log.warning("run %s interrupted during setup, before its first step; the next launch %s", record["run_id"],
                    f"resumes from step {resumes_at}" if resumes_at else "starts it afresh")
    else:
        summary.update(status="failed", error=f"{type(error).__name__}: {error}")
    with stop_signals_deferred():
        run_dir.write_summary(summary)


@dataclass(frozen=True)
class _Run:
    """The objects the training loop of one run works with, built by `_train_locked`."""

    config: TrainConfig
    record: dict[str, Any]  # config.json
    trainer: Trainer
    corpus: PreparedCorpus
    run_dir: RunDir
    checkpointer: Checkpointer
    tracker: Tracker
    wall_before: float  # seconds of wall time of earlier attempts, up to the checkpoint this one resumes from
    started: float  # time.time() when this attempt's first step began
    setup_s: float  # seconds of this attempt before its first step (corpus, model, state, W&B)
    position: dict[str, int] = field(default_factory=dict)  # "steps_done": steps finished so far, for an interrupt
    # The summary progress of the checkpoint Orbax is still writing, recorded once the write has finished
    # (`_record_finished_checkpoint`), so that summary.json never names a checkpoint that is not on disk.
    unrecorded: dict[str, Any] = field(default_factory=dict)

    def wall_s(self) -> float:
        """Return the run's wall time so far in seconds, over all its attempts."""
        return self.wall_before + time.time() - self.started


def _loop(run: _Run, state: dict[str, Any], start_step: int, progress: bool) -> dict[str, Any]:
    """Train from `start_step` to the run's last step; return the final summary (completed or diverged)."""
    config, record, trainer, corpus = run.config, run.record, run.trainer, run.corpus
    run_dir, checkpointer, tracker = run.run_dir, run.checkpointer, run.tracker
    total_steps = config.total_steps
    tokens_per_step = config.data.tokens_per_step
    schedule = {key: jnp.asarray(value, jnp.float32)
                for key, value in schedule_values(config.optimizer, total_steps).items()}
    windows = validation_windows(corpus.val, eval_tokens=config.data.eval_tokens, seq_len=config.data.seq_len)
    val_bytes = predicted_bytes(windows, corpus.tokenizer)
    val_tokens = windows.shape[0] * (windows.shape[1] - 1)
    if config.data.eval_tokens >= val_tokens + config.data.seq_len:  # more than one window short of the request
        log.warning("run %s requests eval_tokens=%d, but the validation split has %d windows of %d tokens, so "
                    "each evaluation scores %d tokens; lower eval_tokens, or prepare the corpus with a larger "
                    "--val-fraction", config.run_id, config.data.eval_tokens, windows.shape[0],
                    config.data.seq_len, val_tokens)
    # MFU only where a published peak exists (known GPUs and TPUs). A CPU's peak depends on the machine.
    peak_flops = devices_peak_flops(trainer.mesh.devices.flat)
    flops_per_token = record["flops_per_token"]["exact"]

    fault = fault_from_env()
    # Seconds of this process's wall time outside training steps, logged at the end (docs/benchmarks.md).
    overhead = {"setup": run.setup_s, "first_step": 0.0, "evaluation": 0.0, "checkpoint": 0.0}

    def kill_after_writes() -> None:
        """Kill this process (the `step` and `eval` faults) once earlier checkpoint writes have ended and
        summary.json records them, so that each fault tests one thing."""
        checkpointer.wait()
        _record_finished_checkpoint(run, summary)
        _kill_self()

    def evaluate(params, step: int) -> dict[str, float]:
        interrupt = kill_after_writes if fault == ("eval", step) else None
        begun = time.time()
        nats = trainer.evaluate(params, windows, after_first_chunk=interrupt)
        overhead["evaluation"] += time.time() - begun
        return {"val_loss": nats / val_tokens, "val_bpb": nats / (math.log(2) * val_bytes)}

    summary = {**initial_summary(record["run_id"], record["sweep"], status="running"), "layout": _layout(trainer)}
    # The steps of a metrics row that an interrupt cut short, saved with its checkpoint: the row goes on
    # from them, so that it equals the uninterrupted run's row.
    # Its values are float32, as the step returned them, so that the row's mean is the uninterrupted run's.
    carried = [{key: np.float32(value) for key, value in metrics.items()}
               for metrics in (run_dir.pending_metrics(start_step) if start_step > 0 else [])]
    pending: list[dict[str, Any]] = list(carried)
    newest_checkpoint = start_step
    interval_start = time.time()
    bar = _progress_bar(progress, config.run_id, total_steps, start_step)
    last_eval: dict[str, float] = {}

    with stop_after_step():
        for step in range(start_step, total_steps):
            run.position["steps_done"] = step
            _record_finished_checkpoint(run, summary)
            # The first SIGINT or SIGTERM: stop here, with a checkpoint of this step (several processes stop
            # together, at the next step where they compare their signals).
            if stop_agreed(step, stop_requested()):
                bar.close()
                _checkpoint_interrupted(run, state, pending, step, newest_checkpoint, summary)
                raise KeyboardInterrupt
            done = step + 1
            if fault == ("nan", done):
                state = {**state, "params": jax.tree.map(lambda p: p * jnp.nan, state["params"])}
            batch = batch_at(corpus.train, step, batch_size=config.data.batch_size, seq_len=config.data.seq_len,
                             seed=config.seed)
            if step == start_step:  # the first call compiles the step, or loads it from the compilation cache
                begun = time.time()
                state, metrics = trainer.step_fn(state, trainer.put_batch(batch), schedule)
                jax.block_until_ready(metrics)
                release_freed_memory()  # what compiling left in the heap (scaling/host_memory.py)
                overhead["first_step"] = time.time() - begun
            else:
                state, metrics = trainer.step_fn(state, trainer.put_batch(batch), schedule)
            pending.append(metrics)
            if fault == ("step", done):
                kill_after_writes()
            if fault == ("signal", done):
                os.kill(os.getpid(), signal.SIGINT)
            is_last = done == total_steps
            is_checkpoint = done % config.checkpoint_interval == 0 or is_last

            # A row also closes at every checkpoint step, so the rows after a resume cover the same steps as an
            # uninterrupted run's (the losses of steps before a checkpoint are not in the checkpoint).
            if done % config.log_interval == 0 or is_checkpoint:
                fetched = jax.device_get(pending)  # the only host synchronisation between evaluations
                now = time.time()
                # Steps carried over from before a resume were timed by the attempt that trained them.
                row = _metric_row(fetched, done, tokens_per_step, now - interval_start, run.wall_s(),
                                  timed_steps=len(fetched) - len(carried))
                if peak_flops is not None:
                    row["mfu"] = row["tokens_per_s"] * flops_per_token / peak_flops
                pending, carried, interval_start = [], [], now
                if not math.isfinite(row["train_loss"]):
                    bar.close()
                    return _stop_diverged(run, summary, fetched, row)
                if done % config.eval_interval == 0 or is_last:
                    last_eval = evaluate(state["params"], done)
                    row.update(last_eval)
                run_dir.append_metrics([row])
                tracker.log(row, step=done)
                bar.update(done, row)

            if is_checkpoint:
                begun = time.time()
                checkpointer.save(done, state)  # Orbax first waits for the previous checkpoint's write to end
                _record_finished_checkpoint(run, summary, finished=True)
                newest_checkpoint = done
                overhead["checkpoint"] += time.time() - begun
                # Its progress goes to summary.json once Orbax has finished writing it in the background, so
                # that a run killed after that resumes with its wall time so far.
                run.unrecorded.update(_progress(record, done, tokens_per_step, run.wall_s()))
                if fault == ("checkpoint", done):
                    _kill_self()

    bar.close()
    begun = time.time()
    checkpointer.wait()
    overhead["checkpoint"] += time.time() - begun
    wall = run.wall_s()
    spent = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in overhead.items())
    log.info("run %s spent %.1f s in train(), of which %s", config.run_id, time.time() - run.started + run.setup_s,
             spent)
    summary.update(_progress(record, total_steps, tokens_per_step, wall), status="completed",
                   final_val_loss=last_eval["val_loss"], final_val_bpb=last_eval["val_bpb"])
    run_dir.write_summary(summary)
    run_dir.clear_pending_metrics()
    log.info("run %s completed: val loss %.4f nats/token, %.4f bits/byte, %.1f s", config.run_id,
             summary["final_val_loss"], summary["final_val_bpb"], wall)
    return summary


def _metric_row(fetched: list[dict[str, Any]], done: int, tokens_per_step: int, interval_s: float,
                wall_s: float, timed_steps: int | None = None) -> dict[str, Any]:
    """Return the metrics.jsonl row of step `done` from the metrics of the steps since the last row.

    `timed_steps` is how many of those steps ran in the `interval_s` seconds (default: all of them).
    """
    timed_steps = len(fetched) if timed_steps is None else timed_steps
    return {
        "step": done,
        "tokens": done * tokens_per_step,
        "train_loss": float(np.mean([m["train_loss"] for m in fetched])),
        "grad_norm": float(fetched[-1]["grad_norm"]),
        "lr": float(fetched[-1]["lr"]),
        "tokens_per_s": timed_steps * tokens_per_step / max(interval_s, 1e-9),
        "wall_s": wall_s,
    }


def _record_finished_checkpoint(run: _Run, summary: dict[str, Any], finished: bool = False) -> None:
    """Write the progress of the newest checkpoint to summary.json once Orbax has finished writing it.

    With `finished`, the caller knows the write has ended (Orbax's `save` of the next checkpoint waits for
    it). Otherwise Orbax is asked whether a write is still in progress.
    """
    if run.unrecorded and (finished or not run.checkpointer.saving()):
        summary.update(run.unrecorded)
        run.unrecorded.clear()
        run.run_dir.write_summary(summary)


def _checkpoint_interrupted(run: _Run, state: dict[str, Any], pending: list[dict[str, Any]], steps_done: int,
                            newest_checkpoint: int, summary: dict[str, Any]) -> None:
    """Checkpoint the state after `steps_done` steps when a signal stopped the run there, with the metrics of
    the steps since the last row (pending_metrics.json), and record that progress in summary.json.

    The next attempt resumes from this step and finishes the cut row, so its rows equal an uninterrupted
    run's. Nothing is saved when the newest checkpoint is of this step already.
    """
    if steps_done == newest_checkpoint:
        run.checkpointer.wait()
        _record_finished_checkpoint(run, summary)
        return
    # Every process of a multi-process run stops at this same step (`stop_agreed`), so they save it together.
    config = run.config
    run.run_dir.write_pending_metrics(steps_done, jax.device_get(pending))
    run.checkpointer.save(steps_done, state)
    run.checkpointer.wait()  # a second signal during the write leaves Orbax's temporary folder, never listed
    run.unrecorded.clear()
    summary.update(_progress(run.record, steps_done, config.data.tokens_per_step, run.wall_s()))
    run.run_dir.write_summary(summary)
    log.info("run %s saved a checkpoint at step %d after the stop signal", config.run_id, steps_done)


def _stop_diverged(run: _Run, summary: dict[str, Any], fetched: list[dict[str, Any]],
                   row: dict[str, Any]) -> dict[str, Any]:
    """Record a non-finite loss in the row's interval: the row, then summary.json with status `diverged` and
    the first bad step. Return that summary."""
    done = row["step"]
    losses = [float(m["train_loss"]) for m in fetched]
    bad = next(i for i, loss in enumerate(losses) if not math.isfinite(loss))
    first_bad = done - len(fetched) + 1 + bad
    run.run_dir.append_metrics([row])
    run.tracker.log(row, step=done)
    summary.update(status="diverged", diverged_step=first_bad, steps_done=done, tokens_seen=row["tokens"],
                   wall_time_s=row["wall_s"])
    run.run_dir.write_summary(summary)
    log.error("run %s diverged: train loss %s at step %d; its status is diverged", run.config.run_id,
              losses[bad], first_bad)
    return summary


def _layout(trainer: Trainer) -> str:
    """Return the devices a run trains on, e.g. "fsdp over 4 cpu devices" or "1 cpu device"."""
    count, platform = trainer.mesh.size, trainer.mesh.devices.flat[0].platform
    if count == 1:
        return f"1 {platform} device"
    return f"{'fsdp' if trainer.fsdp else 'data parallelism'} over {count} {platform} devices"


def _progress(record: dict[str, Any], steps: int, tokens_per_step: int, wall_s: float) -> dict[str, Any]:
    """Return the summary keys of a run's progress after `steps` optimizer steps and `wall_s` seconds."""
    tokens_seen = steps * tokens_per_step
    return {"steps_done": steps, "tokens_seen": tokens_seen,
            "flops_spent": 6 * record["params"]["total"] * tokens_seen, "wall_time_s": wall_s}


def _check_vocabulary(config: TrainConfig, corpus: PreparedCorpus) -> None:
    vocab = corpus.vocab_size
    if config.model.vocab_size != vocab:
        raise UserError(
            f"model.vocab_size={config.model.vocab_size} does not match the corpus at {config.data.path} "
            f"(vocabulary {vocab}); set model.vocab_size to {vocab}"
        )


def _check_same_config(run_dir: RunDir, config: TrainConfig) -> None:
    """Reject starting a run whose folder already records a different config (the mesh may differ)."""
    conflict = folder_conflict(run_dir, config, corpus_meta=None)  # the corpus is compared once it is open
    if conflict:
        raise UserError(f"run folder {run_dir.path} contains {conflict}; choose another run_id or sweep, or delete "
                        "that folder")


class _NoBar:
    def update(self, step: int, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, run_id: str, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self.task = self.progress.add_task(run_id, total=total, completed=start, info="")

    def update(self, step: int, row: dict[str, Any]) -> None:
        info = f"loss {row['train_loss']:.3f}  {row['tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.progress.stop()


def _progress_bar(enabled: bool, run_id: str, total: int, start: int):
    return _RichBar(run_id, total, start) if enabled else _NoBar()
