"""Training runs: the run record, skipping completed runs, the run lock.

Resume after a kill, at several points, is tested in tests/test_faults.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
from scaling.errors import UserError
from scaling.run_store import RunDir
from scaling.train import train
from tests.faults import shared_jax_cache  # noqa: F401  (autouse: one compilation cache for the session)

COMPARED_KEYS = ("step", "tokens", "train_loss", "grad_norm", "lr", "val_loss", "val_bpb")


def tiny_config(corpus: Path, **changes) -> TrainConfig:
    config = TrainConfig(
        model=ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=32),
        optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=5),
        data=DataConfig(path=str(corpus), seq_len=32, batch_size=8, eval_tokens=2048),
        tokens=60 * 32 * 8,
        eval_interval=20,
        log_interval=5,
        checkpoint_interval=20,
        run_id="tiny",
        sweep="test",
        wandb_mode="disabled",
    )
    return config.replace(**changes)


def test_run_record_and_summary(small_corpus, tmp_path):
    config = tiny_config(small_corpus, wandb_mode="offline")
    summary = train(config, tmp_path, progress=False)
    run = RunDir.at(tmp_path, "test", "tiny")

    assert summary["status"] == "completed"
    assert summary["tokens_seen"] == 60 * 32 * 8
    assert 0 < summary["final_val_loss"] < 5.6  # below log(256) = 5.55 nats: it learned something
    record = run.config()
    assert record["params"]["total"] == sum(record["params"][g] for g in
                                            ("embedding", "attention", "mlp", "norms", "head"))
    assert record["flops"]["6ND_total"] == 6 * record["params"]["total"] * record["tokens"]
    assert record["warmup_steps_used"] == 5  # within a fifth of the 60 steps, so not clipped
    assert record["corpus"]["fingerprint"]
    assert set(record["software"]) >= {"jax", "flax", "optax", "orbax-checkpoint"}
    rows = run.metrics()
    assert [row["step"] for row in rows] == list(range(5, 61, 5))
    assert [row["step"] for row in rows if "val_loss" in row] == [20, 40, 60]
    assert (run.path / "wandb").is_dir()  # the offline W&B run sits beside the local record


def test_completed_run_is_skipped(small_corpus, tmp_path):
    config = tiny_config(small_corpus)
    first = train(config, tmp_path, progress=False)
    before = RunDir.at(tmp_path, "test", "tiny").metrics_path.stat().st_mtime_ns
    second = train(config, tmp_path, progress=False)
    assert second == first
    assert RunDir.at(tmp_path, "test", "tiny").metrics_path.stat().st_mtime_ns == before


def test_same_run_id_with_other_config_rejected(small_corpus, tmp_path):
    train(tiny_config(small_corpus), tmp_path, progress=False)
    with pytest.raises(UserError, match=r"different config \(seed 0 -> 1\)"):
        train(tiny_config(small_corpus, seed=1), tmp_path, progress=False)


def test_vocabulary_mismatch_rejected(small_corpus, tmp_path):
    config = tiny_config(small_corpus)
    config = config.replace(model=ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, max_seq_len=32))
    with pytest.raises(UserError, match="set model.vocab_size to 256"):
        train(config, tmp_path, progress=False)


def test_locked_run_is_not_trained_twice(small_corpus, tmp_path):
    from scaling.run_lock import RunLock

    config = tiny_config(small_corpus)
    with RunLock(RunDir.at(tmp_path, "test", "tiny").path):
        script = (
            "import json, sys\n"
            "from scaling.config import TrainConfig\n"
            "from scaling.run_lock import RunLocked\n"
            "from scaling.train import train\n"
            "try:\n"
            "    train(TrainConfig.from_dict(json.load(open(sys.argv[1]))), sys.argv[2], progress=False)\n"
            "except RunLocked as locked:\n"
            "    print(locked); sys.exit(3)\n"
        )
        config_path = tmp_path / "tiny.json"
        config_path.write_text(json.dumps(config.to_dict()))
        other = subprocess.run([sys.executable, "-c", script, str(config_path), str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 3, other.stderr
        assert f"pid {os.getpid()}" in other.stdout or str(os.getpid()) in other.stdout
    assert RunDir.at(tmp_path, "test", "tiny").summary() is None  # the blocked process trained nothing


def test_lock_of_killed_holder_is_released(tmp_path):
    from scaling.run_lock import RunLock

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom scaling.run_lock import RunLock\n"
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)\n", str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path / "run"):
        pass


def test_trainer_reused_for_same_program(small_corpus):
    """Runs that differ in budget, seed or ids share one Trainer (and its compiled programs); another shape,
    optimizer or batch gets its own."""
    from scaling.train import trainer_for

    config = tiny_config(small_corpus)
    first = trainer_for(config)
    assert trainer_for(config.replace(tokens=30 * 32 * 8, seed=3, run_id="other", sweep="s2")) is first
    assert trainer_for(config.replace(model=ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=2,
                                                        max_seq_len=32))) is not first
    assert trainer_for(config.replace(optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=5, beta2=0.99))) \
        is not first
    assert trainer_for(config.replace(data=DataConfig(path=str(small_corpus), seq_len=32, batch_size=4,
                                                      eval_tokens=2048))) is not first


def test_reused_trainer_gives_same_state_as_new(small_corpus):
    """The initial state of a seed is the same from a reused Trainer as from a new one."""
    from scaling.train import Trainer, trainer_for

    config = tiny_config(small_corpus)
    trainer_for(config.replace(seed=5))
    reused = trainer_for(config.replace(seed=7)).init_state(7)
    fresh = Trainer(config.replace(seed=7)).init_state(7)
    for reused_leaf, fresh_leaf in zip(jax.tree.leaves(reused), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(np.asarray(reused_leaf), np.asarray(fresh_leaf))


def test_resume_with_absolute_corpus_path(small_corpus, tmp_path, monkeypatch):
    """A run started with a relative data.path is the same run when named by the absolute path."""
    monkeypatch.chdir(small_corpus.parent)
    relative = tiny_config(small_corpus).replace(
        data=DataConfig(path=small_corpus.name, seq_len=32, batch_size=8, eval_tokens=2048))
    first = train(relative, tmp_path / "runs", progress=False)
    again = train(tiny_config(small_corpus.absolute()), tmp_path / "runs", progress=False)
    assert first["status"] == "completed"
    assert again == first


def test_mfu_logged_against_device_peak(small_corpus, tmp_path, monkeypatch):
    # No accelerator runs here, so the lookup of the devices' published peak is replaced by a fixed 1 TFLOP/s.
    monkeypatch.setattr("scaling.train.devices_peak_flops", lambda devices: 1e12)
    train(tiny_config(small_corpus), tmp_path, progress=False)
    run = RunDir.at(tmp_path, "test", "tiny")
    per_token = run.config()["flops_per_token"]["exact"]

    rows = run.metrics()
    assert rows
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * per_token / 1e12)


def test_no_mfu_on_cpu(small_corpus, tmp_path):
    train(tiny_config(small_corpus), tmp_path, progress=False)
    rows = RunDir.at(tmp_path, "test", "tiny").metrics()
    assert rows
    assert all("mfu" not in row for row in rows)


def test_run_files_share_one_mode(small_corpus, tmp_path):
    # config.json and summary.json are written atomically through mkstemp, which makes files private.
    train(tiny_config(small_corpus), tmp_path, progress=False)
    run = RunDir.at(tmp_path, "test", "tiny")
    modes = {name: (run.path / name).stat().st_mode & 0o777 for name in ("config.json", "summary.json", "metrics.jsonl")}
    assert modes["config.json"] == modes["metrics.jsonl"]
    assert modes["summary.json"] == modes["metrics.jsonl"]


def test_eval_tokens_beyond_the_validation_split_is_warned(small_corpus, tmp_path, caplog):
    """A request for more validation tokens than the corpus has scores what there is, with a warning."""
    import logging

    from scaling.data import PreparedCorpus

    val_tokens = len(PreparedCorpus.load(small_corpus).val)
    caplog.set_level(logging.WARNING, logger="scaling.train")
    config = tiny_config(small_corpus, tokens=10 * 32 * 8, eval_interval=10, checkpoint_interval=10,
                         data=DataConfig(path=str(small_corpus), seq_len=32, batch_size=8, eval_tokens=10**7))
    assert train(config, tmp_path, progress=False)["status"] == "completed"
    scored = (val_tokens - 1) // 32 * 32
    assert any(f"requests eval_tokens=10000000, but the validation split has {scored // 32} windows of 32 tokens, "
               f"so each evaluation scores {scored} tokens" in record.getMessage() for record in caplog.records)


def test_tokens_rounded_to_whole_batches_are_named(small_corpus, tmp_path, caplog):
    """tokens: 1000 trained 768 (3 batches of 256) without a word. Now the log warns, and config.json keeps both."""
    config = tiny_config(small_corpus, tokens=1000, eval_interval=3, log_interval=1, checkpoint_interval=3,
                         optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=1))
    with caplog.at_level(logging.WARNING, logger="scaling.train"):
        train(config, tmp_path, progress=False)
    assert "run tiny trains on 768 of the 1000 tokens asked: whole batches of 256 tokens (batch_size x seq_len)" in (
        caplog.text)
    record = json.loads((RunDir.at(tmp_path, "test", "tiny").config_path).read_text())
    assert (record["tokens_planned"], record["tokens"]) == (1000, 768)
