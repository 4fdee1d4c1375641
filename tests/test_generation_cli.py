"""`scaling generate` end to end: train a tiny run, restore its checkpoint and tokenizer, continue a prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import pytest

from models.generate import Generator, Sampling, UncachedGreedy
from scaling.restore import load_trained_run
from scaling.cli import main
from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
from scaling.train import train


@pytest.fixture(scope="module")
def trained_run(small_corpus, tmp_path_factory) -> Path:
    """Train a 2-layer byte-level model for 10 steps; return its run folder."""
    config = TrainConfig(
        model=ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=32),
        optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=2),
        data=DataConfig(path=str(small_corpus), seq_len=32, batch_size=8, eval_tokens=1024),
        tokens=10 * 32 * 8,
        eval_interval=10,
        log_interval=10,
        checkpoint_interval=10,
        run_id="tiny-generate",
        sweep="test",
        wandb_mode="disabled",
    )
    runs = tmp_path_factory.mktemp("runs")
    summary = train(config, runs, progress=False)
    assert summary["status"] == "completed"
    return runs / "test" / "tiny-generate"


def test_cli_prints_greedy_continuation(trained_run, capsys):
    status = main(["generate", str(trained_run), "--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0"])
    printed = capsys.readouterr().out

    run = load_trained_run(trained_run)
    prompt = [int(t) for t in run.tokenizer.encode("def ")]
    expected = Generator(run.config.model, run.params).generate(
        [prompt], 12, Sampling(temperature=0.0), stop_tokens=[run.tokenizer.eot_id]
    )
    assert status == 0
    assert printed == "def " + run.tokenizer.decode(expected.tokens[0]) + "\n"
    assert run.step == 10

    status = main(["generate", str(trained_run), "--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0",
                   "--continuation-only"])
    assert status == 0
    assert capsys.readouterr().out == run.tokenizer.decode(expected.tokens[0]) + "\n"

    # The trained weights decode the same with and without the cache.
    uncached, _ = UncachedGreedy(run.config.model, run.params, bucket=32).generate([prompt], 12)
    stop = run.tokenizer.eot_id
    expected_uncached = uncached[0][: uncached[0].index(stop)] if stop in uncached[0] else uncached[0]
    assert expected.tokens[0] == expected_uncached


def test_cli_json_reports_timings(trained_run, capsys):
    status = main([
        "generate", str(trained_run), "--prompt", "import ", "--max-new-tokens", "6", "--temperature", "0.8",
        "--top-k", "20", "--top-p", "0.9", "--seed", "3", "--no-stop", "--json",
    ])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["checkpoint_step"] == 10
    assert report["prompt_tokens"] == len("import ")
    assert report["new_tokens"] == 6
    assert report["stop_reason"] == "max_new_tokens"
    assert report["sampling"] == {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3}
    assert report["prefill_ms"] > 0
    assert report["tokens_per_s"] > 0
    assert isinstance(report["continuation"], str)


def test_cli_stops_when_cache_is_full(trained_run, capsys):
    status = main([
        "generate", str(trained_run), "--prompt", "0123456789" * 3, "--max-new-tokens", "5", "--no-stop", "--json",
    ])  # a 30-token prompt in the model's 32 slots
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["new_tokens"] == 2
    assert report["stop_reason"] == "cache_full"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, f"expected one line, got: {err!r}"
    return err


def test_cli_rejects_missing_run_folder(tmp_path, capsys):
    status = main(["generate", str(tmp_path / "nowhere"), "--prompt", "x", "--max-new-tokens", "3"])
    assert status == 2
    assert "does not exist" in _error_line(capsys)


def test_cli_rejects_folder_without_config(tmp_path, capsys):
    status = main(["generate", str(tmp_path), "--prompt", "x", "--max-new-tokens", "3"])
    assert status == 2
    assert "config.json is missing" in _error_line(capsys)


def test_cli_rejects_run_without_checkpoint(trained_run, tmp_path, capsys):
    copy = tmp_path / "untrained"
    copy.mkdir()
    shutil.copy(trained_run / "config.json", copy / "config.json")
    status = main(["generate", str(copy), "--prompt", "x", "--max-new-tokens", "3"])
    assert status == 2
    assert "has no checkpoint" in _error_line(capsys)
    assert not (copy / "checkpoints").exists()  # a failed restore creates no folder


@pytest.mark.parametrize("option, value, message", [
    ("--top-p", "0", "--top-p 0.0 must lie in (0, 1]"),
    ("--temperature", "-1", "--temperature -1.0 must be a finite number >= 0"),
    ("--seed", "-2", "--seed -2 must be an integer >= 0"),
], ids=["top_p", "temperature", "seed"])
def test_cli_rejects_invalid_sampling(option, value, message, trained_run, capsys):
    status = main(["generate", str(trained_run), "--prompt", "x", "--max-new-tokens", "3", option, value])
    assert status == 2
    assert message in _error_line(capsys)


def test_cli_rejects_file_as_run_folder(tmp_path, capsys):
    notes = tmp_path / "tiny.yaml"
    notes.write_text("model: {}\n")
    status = main(["generate", str(notes), "--prompt", "x", "--max-new-tokens", "3"])
    assert status == 2
    assert f"run folder {notes} is a file, not a run folder" in _error_line(capsys)


def test_cli_rejects_prompt_filling_cache(trained_run, capsys):
    status = main(["generate", str(trained_run), "--prompt", "x" * 40, "--max-new-tokens", "3"])
    assert status == 2
    assert "no room to generate" in _error_line(capsys)


def test_run_trained_on_more_devices_loads(trained_run, tmp_path):
    """A run recorded with a layout over 4 devices restores on a machine with one."""
    copy = tmp_path / "tiny-generate"
    shutil.copytree(trained_run, copy)
    record = json.loads((copy / "config.json").read_text())
    record["config"]["mesh"] = "fsdp=4"
    (copy / "config.json").write_text(json.dumps(record))

    run, original = load_trained_run(copy), load_trained_run(trained_run)
    assert run.config.mesh == "fsdp=4"
    assert run.step == original.step
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), run.params, original.params))


def test_bare_run_id_found_in_run_store(trained_run, capsys, monkeypatch, tmp_path):
    """A run id alone names the run of that id in the run store ($SCALING_RUNS), when only one sweep has it."""
    monkeypatch.setenv("SCALING_RUNS", str(trained_run.parent.parent))
    assert load_trained_run("tiny-generate").path == trained_run

    other = trained_run.parent.parent / "again" / "tiny-generate"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("checkpoints"))
    try:
        status = main(["generate", "tiny-generate", "--prompt", "x", "--max-new-tokens", "3"])
        assert status == 2
        assert "run id tiny-generate names runs of 2 sweeps" in _error_line(capsys)
    finally:
        shutil.rmtree(other.parent)
