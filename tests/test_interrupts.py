"""SIGINT and SIGTERM stop training at the end of the step in flight, with a checkpoint of it.

This holds even when Python drops the KeyboardInterrupt they raise. A second signal stops training at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from scaling.interrupts import interrupts_on_stop_signals, stop_requested, stop_signals_deferred


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_raises_and_is_remembered(stop_signal):
    before = signal.getsignal(stop_signal)
    with interrupts_on_stop_signals():
        assert not stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), stop_signal)
        assert stop_requested()
    assert not stop_requested()  # the end of the block clears it
    assert signal.getsignal(stop_signal) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt itself
def test_dropped_interrupt_still_stops_training(small_corpus, tmp_path, monkeypatch):
    """A signal that lands where Python ignores exceptions (here: a __del__ method) still ends the run at the
    next step, as "interrupted"."""
    import gc

    import scaling.train as train_module

    class SwallowsInterrupt:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # raises inside __del__: Python prints it and drops it

    real_batch_at = train_module.batch_at

    def batch_at(tokens, step, **kwargs):
        if step == 25:
            SwallowsInterrupt()  # freed at once; its KeyboardInterrupt is dropped
            gc.collect()
        return real_batch_at(tokens, step, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    summary = train_until_interrupted(small_corpus, tmp_path)
    assert summary["status"] == "interrupted"
    assert summary["steps_done"] == 26  # the signal came as the 26th step read its batch: that step ends, saved


def test_deferred_signal_is_recorded_not_raised():
    with interrupts_on_stop_signals():
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt outside the deferred block
        assert stop_requested()


def test_second_signal_during_summary_write(small_corpus, tmp_path, monkeypatch):
    """Ctrl-C in a terminal reaches a sweep worker, and the launcher then stops it again. A second signal that
    lands while the worker records the first must not leave the summary at "running"."""
    import scaling.train as train_module
    from scaling.run_store import RunDir

    real_batch_at = train_module.batch_at
    real_write_summary = RunDir.write_summary

    def batch_at(tokens, step, **kwargs):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)  # the first signal
        return real_batch_at(tokens, step, **kwargs)

    def write_summary(self, summary):
        if summary.get("status") == "interrupted":
            os.kill(os.getpid(), signal.SIGTERM)  # the second, in the middle of recording the first
        real_write_summary(self, summary)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    monkeypatch.setattr(RunDir, "write_summary", write_summary)
    summary = train_until_interrupted(small_corpus, tmp_path)
    assert summary["status"] == "interrupted"
    assert summary["steps_done"] == 26  # the signal came as the 26th step read its batch: that step ends, saved


def test_once_records_a_duplicate_signal(monkeypatch):
    """With once=True a second signal, arriving while the first is handled, is recorded and not raised; one
    after DUPLICATE_WINDOW_S raises again, so a process stuck while it shuts down can still be stopped."""
    import scaling.interrupts

    with interrupts_on_stop_signals(once=True):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs at the next bytecode; this sleep is interrupted
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # no KeyboardInterrupt here
        assert stop_requested()
        monkeypatch.setattr(scaling.interrupts, "DUPLICATE_WINDOW_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    with interrupts_on_stop_signals():  # the default mode raises at every signal
        for number in (signal.SIGINT, signal.SIGTERM):
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), number)
                time.sleep(5)


def test_two_signals_at_once(small_corpus, tmp_path, monkeypatch):
    """`timeout -s INT` signals a launcher's whole process group, and the launcher then stops each worker
    again: a worker can get two signals back to back. The second must not cut short the recording of the
    first, which would leave the summary at "running"."""
    import scaling.train as train_module

    real_batch_at = train_module.batch_at

    def batch_at(tokens, step, **kwargs):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch_at(tokens, step, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    summary = train_until_interrupted(small_corpus, tmp_path)
    assert summary["status"] == "interrupted"
    assert summary["steps_done"] == 26  # the signal came as the 26th step read its batch: that step ends, saved


def train_until_interrupted(corpus, runs):
    """Train the tiny run inside `interrupts_on_stop_signals()`, expect KeyboardInterrupt, return its summary."""
    import scaling.train as train_module
    from scaling.run_store import RunDir
    from tests.test_train import tiny_config

    config = tiny_config(corpus, wandb_mode="disabled")
    with interrupts_on_stop_signals():
        with pytest.raises(KeyboardInterrupt):
            train_module.train(config, runs, progress=False)
    return RunDir.at(runs, config.sweep, config.run_id).summary()


def test_signal_in_training_checkpoints_that_step(small_corpus, tmp_path, monkeypatch):
    """The first signal ends the step in flight and saves it with the metrics of its unfinished row; the
    handlers are restored after the run."""
    import scaling.train as train_module
    from scaling.run_store import RunDir
    from tests.faults import finished_steps

    real_batch_at = train_module.batch_at

    def batch_at(tokens, step, **kwargs):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch_at(tokens, step, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    before = signal.getsignal(signal.SIGINT)
    summary = train_until_interrupted(small_corpus, tmp_path)
    run = RunDir.at(tmp_path, "test", "tiny")

    assert signal.getsignal(signal.SIGINT) == before
    assert summary["interrupted_at_step"] == 26
    assert finished_steps(run.checkpoint_dir) == [20, 26]
    pending = run.pending_metrics(26)
    assert len(pending) == 1  # rows every 5 steps: step 26 is the only one after the row of 25
    assert set(pending[0]) == {"train_loss", "grad_norm", "lr"}
    assert run.pending_metrics(20) == []  # recorded for checkpoint 26 only


def test_second_signal_in_training_stops_at_once(small_corpus, tmp_path, monkeypatch):
    """A second signal, later than the duplicate window, raises at once: no checkpoint of the step."""
    import scaling.interrupts
    import scaling.train as train_module
    from scaling.run_store import RunDir
    from tests.faults import finished_steps

    monkeypatch.setattr(scaling.interrupts, "DUPLICATE_WINDOW_S", 0.0)
    real_batch_at = train_module.batch_at

    def batch_at(tokens, step, **kwargs):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)  # recorded: the loop would stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # raises here
        return real_batch_at(tokens, step, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    summary = train_until_interrupted(small_corpus, tmp_path)
    run = RunDir.at(tmp_path, "test", "tiny")

    assert summary["status"] == "interrupted"
    assert summary["steps_done"] == 20
    assert summary["interrupted_at_step"] == 25
    assert finished_steps(run.checkpoint_dir) == [20]
    assert not run.pending_metrics_path.exists()


@pytest.mark.parametrize("delay_s", [0.3, 0.8, 1.5])
def test_early_signal_to_scaling_train_stops_it(delay_s, small_corpus, tmp_path):
    """SIGINT while `scaling train` starts (importing JAX, building the run): exit 130, never completed.

    A signal that landed in one of JAX's garbage-collection callbacks under Python's own handler used to be
    dropped, and the run trained to its end."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from scaling.run_store import RunDir
    from tests.test_train import tiny_config

    config = tiny_config(small_corpus, wandb_mode="disabled")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    process = subprocess.Popen([sys.executable, "-m", "scaling.cli", "train", str(path), "--runs",
                                str(tmp_path / "runs"), "--no-progress"], cwd=Path(__file__).resolve().parents[1],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)

    # 130, or death by SIGINT, which a shell reports as 130 too. The second happened about 1.2 s in, after
    # `scaling: interrupted` was printed. NOTE: why the interpreter then ends by SIGINT is not known here.
    assert process.returncode in (130, -signal.SIGINT), stderr[-3000:]
    assert "interrupted" in stderr
    assert "completed" not in stdout
    summary = RunDir.at(tmp_path / "runs", config.sweep, config.run_id).summary()
    assert summary is None or summary["status"] == "interrupted"
