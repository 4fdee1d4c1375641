"""Bad input through the `scaling` command: a one-line error, exit status 2, nothing already written lost.

Most cases call `scaling.cli.main` in this process, which is what the console script runs. One runs the
installed `scaling` script to check the exit status and stderr of a real process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from scaling.cli import main
from scaling.run_store import RunDir
from tests.faults import shared_jax_cache  # noqa: F401  (autouse: one compilation cache for the session)

SCALING = Path(sys.executable).with_name("scaling")


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run `scaling ARGS`; return the exit status and stderr."""
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def assert_user_error(status: int, stderr: str, *fragments: str) -> None:
    """Exit status 2, no traceback, one `scaling: error:` line that contains every fragment."""
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("scaling: error:")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, to show a failed command changed nothing."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".lock"}


def write_config(path: Path, **sections) -> Path:
    path.write_text(json.dumps(sections))
    return path


def train_config(corpus: Path, run_id: str, **changes) -> dict:
    config = {
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "data": {"path": str(corpus), "seq_len": 32, "batch_size": 8, "eval_tokens": 256},
        "tokens": 10 * 32 * 8, "log_interval": 5, "eval_interval": 10, "checkpoint_interval": 10,
        "run_id": run_id, "sweep": "bad", "wandb_mode": "disabled",
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> Path:
    """About 10 KB of real text, prepared as bytes: 1 to 2 epochs for the tiny runs here."""
    source = tmp_path_factory.mktemp("text")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("bisect.py", "heapq.py", "keyword.py"):
        (source / name).write_bytes((stdlib / name).read_bytes()[:4000])
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    assert main(["data", "prepare", str(source), "--out", str(out), "--val-fraction", "0.34"]) == 0
    return out


# Corpora


@pytest.mark.parametrize("command", [["sweep", "plan", "quick", "--no-probe"], ["sweep", "launch", "quick"],
                                     ["data", "prepare"], ["demo"]], ids=lambda command: " ".join(command[:2]))
def test_runs_folder_that_is_a_file(command, capsys, tmp_path, monkeypatch):
    """--runs or SCALING_RUNS naming a file is one line, before anything is prepared or written."""
    notes_file = tmp_path / "notes.txt"
    notes_file.write_text("not a runs folder\n")
    if command == ["demo"]:
        monkeypatch.setenv("SCALING_RUNS", str(notes_file))
        assert_user_error(*cli(capsys, *command), f"SCALING_RUNS {notes_file} is a file, not a folder")
    else:
        assert_user_error(*cli(capsys, *command, "--runs", notes_file), f"--runs {notes_file} is a file, not a folder")
    assert sorted(tmp_path.iterdir()) == [notes_file]


def test_runs_folder_inside_file(capsys, caplog, tmp_path):
    """A --runs path below a file, and --runs beside an explicit RUNS for fit or with train: one line each."""
    notes_file = tmp_path / "notes.txt"
    notes_file.write_text("not a runs folder\n")
    assert_user_error(*cli(capsys, "data", "prepare", notes_file, "--runs", notes_file / "sub"),
                      f"lies inside {notes_file}, which is a file")
    assert_user_error(*cli(capsys, "fit", tmp_path, "--runs", notes_file), f"--runs {notes_file} is a file")

    # This model's step needs about 50 MB of temporaries, for which train() would first log that it keeps
    # freed memory (scaling.host_memory). The runs folder is checked before that.
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 128}}\n"
                      f"data: {{path: {tmp_path / 'unused'}, seq_len: 128, batch_size: 16}}\n")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert_user_error(*cli(capsys, "train", config, "--runs", notes_file), f"--runs {notes_file} is a file")
    assert not caplog.records, caplog.text
    assert sorted(tmp_path.iterdir()) == sorted([notes_file, config])


def test_empty_corpus_keeps_the_prepared_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_bytes(b"")
    status, stderr = cli(capsys, "data", "prepare", empty, "--out", tmp_path / "new")
    assert_user_error(status, stderr, "has no text", "all 1 documents are empty")
    assert not (tmp_path / "new").exists()

    (tmp_path / "good.txt").write_text("some text\n" * 100)
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", str(tmp_path / "good.txt"), "--out", str(prepared)]) == 0
    before = snapshot(prepared)
    status, stderr = cli(capsys, "data", "prepare", empty, "--out", prepared, "--force")
    assert_user_error(status, stderr, "has no text")
    assert snapshot(prepared) == before


def test_vocab_size_needs_bpe(capsys, tmp_path):
    source = tmp_path / "text.txt"
    source.write_text("some text\n" * 100)
    status, stderr = cli(capsys, "data", "prepare", source, "--vocab-size", "500", "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, "--vocab-size 500 applies to --tokenizer bpe only")
    assert not (tmp_path / "runs").exists()


def test_source_folder_without_files(capsys, tmp_path):
    (tmp_path / "nothing").mkdir()
    status, stderr = cli(capsys, "data", "prepare", tmp_path / "nothing", "--out", tmp_path / "out")
    assert_user_error(status, stderr, "contains no files")


def test_corpus_smaller_than_a_batch(capsys, tmp_path):
    (tmp_path / "small.txt").write_text("one line\n" * 20 + "last line of validation text, long enough: 40 bytes\n")
    corpus = tmp_path / "small"
    assert main(["data", "prepare", str(tmp_path / "small.txt"), "--out", str(corpus)]) == 0
    config = write_config(tmp_path / "c.json", **train_config(corpus, "small"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "181 training tokens", "fewer than one batch", "= 257")  # 180 bytes + EOT
    assert not (tmp_path / "runs").exists()  # nothing of the run written, not even its folder or lock


def test_validation_split_smaller_than_a_sequence(capsys, tmp_path):
    (tmp_path / "one.txt").write_text("a line of training text, forty bytes long\n" * 40 + "x\n")
    corpus = tmp_path / "one"
    assert main(["data", "prepare", str(tmp_path / "one.txt"), "--out", str(corpus), "--val-fraction", "0.01"]) == 0
    config = write_config(tmp_path / "c.json", **train_config(corpus, "one"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "validation tokens", "--val-fraction")
    assert not (tmp_path / "runs").exists()


def test_non_utf8_bytes_are_decoded_with_replacement(capsys, tmp_path, caplog):
    source = tmp_path / "latin1.txt"
    source.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    with caplog.at_level(logging.WARNING, logger="scaling.data"):
        assert main(["data", "prepare", str(source), "--out", str(tmp_path / "out")]) == 0
    assert "1 of 1 documents" in caplog.text
    assert "decoded as U+FFFD" in caplog.text
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["documents_with_invalid_utf8"] == 1
    tokens = (tmp_path / "out" / "train.bin").read_bytes()
    assert "caf\ufffd cr\ufffdme".encode() in tokens  # U+FFFD is EF BF BD in the byte tokens


def test_token_budget_larger_than_corpus_warns_with_epochs(capsys, tmp_path, text_corpus, caplog):
    meta = json.loads((text_corpus / "meta.json").read_text())
    tokens = meta["tokens"]["train"] + 512
    steps = tokens // 256
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "epochs", tokens=tokens))
    with caplog.at_level(logging.WARNING, logger="scaling.train"):
        status, _ = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert status == 0
    epochs = steps * 256 / meta["tokens"]["train"]
    assert f"{epochs:.2f} epochs over the {meta['tokens']['train']} training tokens" in caplog.text


def test_token_budget_above_max_epochs_is_refused(capsys, tmp_path, text_corpus):
    meta = json.loads((text_corpus / "meta.json").read_text())
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "epochs", tokens=3 * meta["tokens"]["train"]))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress", "--max-epochs", "1")
    assert_user_error(status, stderr, "above max_epochs=1.0", "epochs over the corpus")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("status", ["running", "completed"])
def test_resume_on_another_corpus_is_refused(capsys, tmp_path, status):
    """A killed run whose corpus folder was prepared again from other text must not resume on it, and a
    completed one must not be skipped as if its loss were measured on the new text."""
    from scaling.config import TrainConfig
    from scaling.data import PreparedCorpus
    from scaling.train import run_record

    corpus, text = tmp_path / "corpus", tmp_path / "src" / "a.txt"
    text.parent.mkdir()
    text.write_text("first text of this corpus\n" * 400)
    assert main(["data", "prepare", str(text.parent), "--out", str(corpus)]) == 0
    raw = train_config(corpus, "moved")
    run = RunDir.at(tmp_path / "runs", "bad", "moved")
    run.write_config(run_record(TrainConfig.from_dict(raw), PreparedCorpus.load(corpus).meta))
    run.write_summary({"status": status})  # "running" is what a run killed midway leaves
    before = snapshot(run.path)

    text.write_text("other text now, prepared again in place\n" * 400)
    assert main(["data", "prepare", str(text.parent), "--out", str(corpus)]) == 0
    exit_status, stderr = cli(capsys, "train", write_config(tmp_path / "c.json", **raw), "--runs", tmp_path / "runs")
    assert_user_error(exit_status, stderr, "trained on another corpus (same source and settings, other text; "
                      "fingerprint ", "prepare the original corpus again")
    assert snapshot(run.path) == before


# Device meshes


@pytest.mark.parametrize("mesh_args, config_mesh, fragments", [
    (["--mesh", "data=3"], None, ["mesh 'data=3' splits each batch over 3 devices", "data.batch_size=8"]),
    (["--mesh", "foo=2"], None, ["mesh 'foo=2' is not data=N or fsdp=N", "try data=4 or fsdp=4"]),
    (["--mesh", "data=0"], None, ["mesh 'data=0' asks for 0 devices", "use at least 1"]),
    ([], "fsdp=3", ["mesh 'fsdp=3' splits each batch over 3 devices", "use a device count that divides 8"]),
], ids=["indivisible", "unknown_axis", "zero_devices", "indivisible_in_config"])
def test_bad_mesh(mesh_args, config_mesh, fragments, capsys, tmp_path, text_corpus):
    changes = {} if config_mesh is None else {"mesh": config_mesh}
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "mesh", **changes))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress", *mesh_args)
    assert_user_error(status, stderr, *fragments)
    assert not (tmp_path / "runs").exists()


def test_mesh_larger_than_the_machine(capsys, tmp_path, text_corpus):
    import jax

    if jax.device_count() >= 8:
        pytest.skip("this process sees 8 or more devices")
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "mesh"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress", "--mesh", "fsdp=8")
    assert_user_error(status, stderr, "mesh fsdp=8 asks for 8 devices, but JAX sees", "; use fsdp=")
    if jax.devices()[0].platform == "cpu":  # how to try a mesh on a CPU, as in the sweep launcher's message
        assert "XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices" in stderr
    assert not (tmp_path / "runs").exists()


def test_bad_mesh_environment_variable(capsys, tmp_path, text_corpus, monkeypatch):
    monkeypatch.setenv("SCALING_MESH", "data=two")
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "mesh"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "SCALING_MESH 'data=two' is not data=N or fsdp=N")
    assert not (tmp_path / "runs").exists()


# Model shapes


@pytest.mark.parametrize("model, fragment", [
    ({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
    ({"d_model": 32, "n_heads": 4, "n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
    ({"n_layer": 3}, "unknown model key 'n_layer'"),
], ids=["heads", "kv_heads", "typo"])
def test_bad_model_shape(model, fragment, capsys, tmp_path, text_corpus):
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "shape", model=model))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("changes, fragment", [
    ({"seed": -1}, "seed=-1 must be a whole number >= 0"),
    ({"model": {"d_ff": 0}}, "model.d_ff=0 must be a positive integer"),
    ({"model": {"head_dim": 0}}, "model.head_dim=0 must be a positive integer"),
    ({"model": {"tie_embeddings": "no"}}, "model.tie_embeddings='no' must be true or false, without quotes"),
    ({"model": {"rope_base": -1}}, "model.rope_base=-1 must be a number above 1"),
    ({"optimizer": {"grad_clip": -1}}, "optimizer.grad_clip=-1 must be >= 0 (0 turns it off)"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay=-0.1 must be >= 0"),
    ({"optimizer": {"beta2": 1.5}}, "optimizer.beta2=1.5 must lie in [0, 1)"),
    ({"model": [1, 2]}, "model must be a section of keys"),
], ids=["seed", "d_ff", "head_dim", "tie_quoted", "rope_base", "grad_clip", "weight_decay", "beta2", "model_list"])
def test_bad_config_value_writes_nothing(changes, fragment, capsys, tmp_path, text_corpus):
    raw = train_config(text_corpus, "values")
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    config = write_config(tmp_path / "c.json", **raw)
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, fragment)
    assert not (tmp_path / "runs").exists()


def test_config_path_folder_or_binary(capsys, tmp_path):
    assert_user_error(*cli(capsys, "train", tmp_path, "--runs", tmp_path / "runs"),
                      f"config file {tmp_path} is a folder")
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    assert_user_error(*cli(capsys, "train", binary, "--runs", tmp_path / "runs"), "c.yaml is not UTF-8 text")
    assert not (tmp_path / "runs").exists()


def test_run_or_checkpoint_folder_that_is_a_file(capsys, tmp_path, text_corpus):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "bad").write_text("a file where the sweep folder goes\n")
    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "file"))
    assert_user_error(*cli(capsys, "train", config, "--runs", runs), f"{runs / 'bad'} is a file")
    assert (runs / "bad").read_text() == "a file where the sweep folder goes\n"

    (runs / "bad").unlink()
    (runs / "bad" / "file").mkdir(parents=True)
    (runs / "bad" / "file" / "checkpoints").write_text("not checkpoints\n")
    assert_user_error(*cli(capsys, "train", config, "--runs", runs), "checkpoints is a file")
    assert (runs / "bad" / "file" / "checkpoints").read_text() == "not checkpoints\n"


@pytest.mark.parametrize("names, fragment", [
    ({"run_id": "../../outside"}, "run_id='../../outside' must be a folder-safe name"),
    ({"sweep": "../sweep_out"}, "sweep='../sweep_out' must be a folder-safe name"),
    ({"run_id": "a/b"}, "run_id='a/b'"),
    ({"sweep": "_data"}, "sweep='_data'"),
], ids=["run_id_up", "sweep_up", "run_id_slash", "sweep_internal"])
def test_run_names_stay_under_runs(names, fragment, capsys, tmp_path, text_corpus):
    work = tmp_path / "work"
    work.mkdir()
    sweep = {"sweep": names["sweep"]} if "sweep" in names else {}
    config = write_config(work / "c.json", **train_config(text_corpus, names.get("run_id", "named"), **sweep))
    status, stderr = cli(capsys, "train", config, "--runs", work / "runs")
    assert_user_error(status, stderr, fragment)
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["c.json", "work"]


def test_checkpoint_of_another_model_is_refused(capsys, tmp_path, text_corpus):
    """The run folder contains a 2-layer checkpoint but no config.json (deleted by hand). A 3-layer config
    must not train over it, and nothing of the run changes."""
    from scaling.checkpoint import Checkpointer
    from scaling.config import TrainConfig
    from scaling.train import Trainer

    two_layers = train_config(text_corpus, "changed")
    run = RunDir.at(tmp_path / "runs", "bad", "changed")
    checkpointer = Checkpointer(run.checkpoint_dir)
    checkpointer.save(10, Trainer(TrainConfig.from_dict(two_layers)).init_state(0))
    checkpointer.close()
    before = snapshot(run.path)

    config = write_config(tmp_path / "c.json", **train_config(text_corpus, "changed", model={"n_layers": 3}))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "checkpoint at step 10", "params/block_2/", "start a new run_id")
    assert snapshot(run.path) == before
    assert not run.config_path.exists()


# Sweep specs

SPEC_HEAD = """name: bad
data: {source: python-stdlib, tokenizer: bytes}
model: {convention: total, aspect_ratio: 20, head_dim: 16}
train: {seq_len: 32, batch_size: 8, eval_tokens: 256}
"""


@pytest.mark.parametrize("body, fragments", [
    ("isoflop: {budgets: [1e10], params: [1e4, 2e4]}\ncolour: red\n", ["unknown key 'colour'", "known keys are"]),
    ("isoflop: {budgets: [0, 1e10], params: [1e4, 2e4]}\n", ["isoflop.budgets[0]=0", "must be a positive number"]),
    ("isoflop: {budgets: [-5], params: [1e4, 2e4]}\n", ["isoflop.budgets[0]=-5", "must be a positive number"]),
    ("grid: {params: [1e4, 2e4], tokens: [0]}\n", ["grid.tokens[0]=0", "must be a positive number"]),
    ("grid: {params: [1e4, 1e4], tokens: [1e5]}\n", ["duplicate run N1e4-D1e5", "remove one of them"]),
    ("isoflop: {budgets: [1e10, 1e10], params: [1e4]}\n", ["lists 1e10 twice"]),
    ("isoflop: {budgets: [-1e10], params: [1e4, 2e4]}\n", ["isoflop.budgets[0]='-1e10'", "must be a positive number"]),
], ids=["unknown_key", "zero_budget", "negative_budget", "zero_tokens", "duplicate_run", "duplicate_budget",
        "negative_budget_exponent"])
def test_bad_sweep_spec(body, fragments, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD + body)
    status, stderr = cli(capsys, "sweep", "plan", spec, "--runs", tmp_path / "runs", "--no-probe")
    assert_user_error(status, stderr, "sweep spec", *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, fragments", [
    ("name: bad\ngrid: {params: [1e4, 2e4}\n", ["is not valid YAML", "line 2, column"]),
    ("", ["is empty", "start from one of: demo"]),
    (SPEC_HEAD.replace("head_dim: 16", "head_dim: 7") + "isoflop: {budgets: [1e10], params: [1e4, 2e4]}\n",
     ["model.head_dim=7 is odd"]),
    # YAML itself would keep the second 1e10 and drop the first budget's sizes without a word.
    (SPEC_HEAD + "isoflop:\n  params:\n    1e10: [1e4, 2e4]\n    1e10: [2e4, 4e4]\n",
     ["is not valid YAML", "key '1e10' appears again (first on line", "merge the two entries"]),
    ("run_id: one\ntokens: 1e6\nmodel: {d_model: 64}\n",
     ["this is one run's config (it has run_id:, tokens:), not a sweep spec; train it with `scaling train"]),
], ids=["unclosed_bracket", "empty", "odd_head_dim", "repeated_budget_key", "run_config"])
def test_unreadable_sweep_spec(text, fragments, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    status, stderr = cli(capsys, "sweep", "plan", spec, "--runs", tmp_path / "runs", "--no-probe")
    assert_user_error(status, stderr, "sweep spec", *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, fragment", [
    ("# nothing yet\n", "c.yaml is empty; start from examples/train_small.yaml"),
    ("run_id: x\nmodel: {d_model: 3\n", "is not valid JSON or YAML: line 3, column 1"),
    ("run_id: x\nmodel: {d_model: 64}\nmodel: {d_model: 32}\n", "line 3, column 1: the key 'model' appears again"),
    ("name: s\nmodel: {aspect_ratio: 32}\nisoflop: {budgets: [1e10], params: [1e4, 2e4]}\n",
     "c.yaml is a sweep spec (it has isoflop:), not one run's config; run it with `scaling sweep launch"),
], ids=["empty", "unclosed_brace", "repeated_section", "sweep_spec"])
def test_unreadable_config_file(text, fragment, capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("mesh, fragments", [
    ("data=3", ["train.mesh 'data=3' splits each batch over 3 devices", "train.batch_size=8"]),
    ("foo=2", ["train.mesh 'foo=2' is not data=N or fsdp=N"]),
    ("4", ["train.mesh=4 must be a string"]),
], ids=["indivisible", "unknown_axis", "number"])
def test_bad_mesh_in_sweep_spec(mesh, fragments, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.replace("eval_tokens: 256}", f"eval_tokens: 256, mesh: {mesh}}}")
                    + "isoflop: {budgets: [1e10], params: [1e4, 2e4]}\n")
    status, stderr = cli(capsys, "sweep", "plan", spec, "--runs", tmp_path / "runs", "--no-probe")
    assert_user_error(status, stderr, "sweep spec", *fragments)
    assert not (tmp_path / "runs").exists()


def test_sweep_mesh_larger_than_the_machine(capsys, tmp_path):
    """The plan's throughput probe cannot time a mesh of more devices than the machine has.

    `--no-probe` plans anyway, and launching rejects the spec before any worker starts.
    """
    import jax

    if jax.device_count() >= 8:
        pytest.skip("this process sees 8 or more devices")
    source = tmp_path / "source"
    source.mkdir()
    (source / "heapq.py").write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "heapq.py").read_bytes())
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.replace("python-stdlib", str(source))
                    .replace("eval_tokens: 256}", "eval_tokens: 256, mesh: fsdp=8}")
                    + "isoflop: {budgets: [1e10], params: [1e4, 2e4]}\n")
    status, stderr = cli(capsys, "sweep", "plan", spec, "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, "throughput probe: mesh fsdp=8 asks for 8 devices", "pass --no-probe")
    assert cli(capsys, "sweep", "plan", spec, "--runs", tmp_path / "runs", "--no-probe")[0] == 0

    # Launching refuses it before any worker starts, and leaves no run folder behind.
    status, stderr = cli(capsys, "sweep", "launch", spec, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "train.mesh 'fsdp=8' asks for 8 devices, but a worker sees",
                      "xla_force_host_platform_device_count")
    assert not [path for path in (tmp_path / "runs").glob("*/*") if not path.parent.name.startswith("_")]


def test_sweep_bad_memory_switch(capsys, tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    (source / "heapq.py").write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "heapq.py").read_bytes())
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.replace("python-stdlib", str(source)) + "isoflop: {budgets: [1e10], params: [1e4]}\n")
    monkeypatch.setenv("SCALING_KEEP_FREED_MEMORY", "yes")

    status, stderr = cli(capsys, "sweep", "launch", spec, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "invalid SCALING_KEEP_FREED_MEMORY='yes'", "use 1, 0 or auto")
    assert not [path for path in (tmp_path / "runs").glob("*/*") if not path.parent.name.startswith("_")]


# Fits and questions


# An earlier fit.json: the keys `scaling fit` checks before it replaces one, and a marker to find it by.
EARLIER_FIT = '{"schema": 1, "approach3": {}, "from": "an earlier fit"}\n'


def write_runs(root: Path, points: list[tuple[float, float]], fingerprints: list[str] | None = None) -> None:
    from analysis.synthetic import write_synthetic_run

    for index, (params, tokens) in enumerate(points):
        write_synthetic_run(root, "s", f"r{index}", params_total=int(params), tokens=int(tokens),
                            final_loss=2.0 + 1e3 / params ** 0.3 + 1e3 / tokens ** 0.3,
                            fingerprint=(fingerprints or ["same"] * len(points))[index])


@pytest.mark.parametrize("points, fingerprints, fragments", [
    ([(1e5, 1e7), (2e5, 1e7), (4e5, 2e7)], None, ["3 completed run(s)", "needs at least 5 runs"]),
    ([(1e5, d) for d in (1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7)], None, ["one model size", "at least 2 sizes"]),
    ([(1e5, 1e7), (2e5, 1e7), (4e5, 2e7), (1e5, 4e7), (2e5, 2e7), (8e5, 1e7)], list("ababab"),
     ["2 corpus/tokenizer fingerprints (a (sweep s); b (sweep s)); fit one corpus at a time, or pass"]),
], ids=["too_few_runs", "one_size", "two_corpora"])
def test_bad_fit_keeps_the_previous_fit(points, fingerprints, fragments, capsys, tmp_path):
    write_runs(tmp_path / "runs", points, fingerprints)
    out = tmp_path / "fit"
    out.mkdir()
    (out / "fit.json").write_text(EARLIER_FIT)
    status, stderr = cli(capsys, "fit", tmp_path / "runs", "--out", out)
    assert_user_error(status, stderr, *fragments)
    assert (out / "fit.json").read_text() == EARLIER_FIT


@pytest.mark.parametrize("options, fragments", [
    (["--starts", "0"], ["starts=0", "at least 1 start"]),
    (["--holdout", "1.5"], ["holdout fraction 1.5 must lie between 0 and 1"]),
    (["--holdout", "0"], ["holdout fraction 0.0 must lie between 0 and 1"]),
], ids=["no_starts", "holdout_above_1", "holdout_0"])
def test_bad_fit_option_keeps_the_previous_fit(options, fragments, capsys, tmp_path):
    write_runs(tmp_path / "runs", [(1e5, 1e7), (2e5, 1e7), (4e5, 2e7), (1e5, 4e7), (2e5, 2e7), (8e5, 1e7)])
    out = tmp_path / "fit"
    out.mkdir()
    (out / "fit.json").write_text(EARLIER_FIT)
    status, stderr = cli(capsys, "fit", tmp_path / "runs", "--out", out, *options)
    assert_user_error(status, stderr, *fragments)
    assert (out / "fit.json").read_text() == EARLIER_FIT


def test_number_beyond_floating_point(capsys):
    status, stderr = cli(capsys, "ask", "tokens for 1e400")
    assert_user_error(status, stderr, "number 1e400 in the question is beyond floating point")


@pytest.mark.parametrize("question", ["tokens for seven", "", "loss at 7B params"])
def test_question_that_does_not_parse(question, capsys):
    status, stderr = cli(capsys, "ask", question)
    assert_user_error(status, stderr, f"question {question!r} is not understood", "tokens for 7B")


def test_installed_script_prints_one_line_and_exits_2():
    result = subprocess.run([str(SCALING), "ask", "tokens for seven"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("scaling: error: question 'tokens for seven' is not understood")


@pytest.mark.parametrize("args, line", [
    (["fit", "runs", "--method", "aproach2"],
     "scaling fit: error: argument --method: invalid choice: 'aproach2' (choose from 'approach1', 'approach2', "
     "'kaplan', 'extrapolation'); did you mean 'approach2'? See `scaling fit --help`"),
    (["generate", "runs/x", "--max-new-tokens", "5"],
     "scaling generate: error: the following arguments are required: --prompt; see `scaling generate --help`"),
    (["fit", "runs", "--starts", "2.5"],
     "scaling fit: error: argument --starts: '2.5' is not a whole number; write e.g. 200, 1e3 or 4K; see "
     "`scaling fit --help`"),
    (["fitt"], "scaling: error: argument COMMAND: invalid choice: 'fitt' (choose from 'data', 'train', 'demo', "
               "'sweep', 'fit', 'ask', 'report', 'generate'); did you mean 'fit'? See `scaling --help`"),
])
def test_bad_command_line_is_one_line(args, line, capsys):
    """argparse's own errors, one line each as the others (a reviewer got 6-8 lines of usage before)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_counts_on_the_command_line_take_exponents():
    from scaling.cli import build_parser

    args = build_parser().parse_args(["generate", "runs/x", "--prompt", "a", "--max-new-tokens", "1e3",
                                      "--cache-len", "2K"])
    assert (args.max_new_tokens, args.cache_len) == (1000, 2000)


def test_corpus_path_relative_to_another_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.json", **train_config(Path("runs/_data/missing"), "rel"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, "runs/_data/missing does not exist in the current folder",
                      str(tmp_path / "runs/_data/missing"), "give an absolute path")
    assert not (tmp_path / "runs").exists()


def test_corpus_path_naming_a_file_of_it(capsys, tmp_path, text_corpus):
    config = write_config(tmp_path / "c.json", **train_config(text_corpus / "train.bin", "file"))
    status, stderr = cli(capsys, "train", config, "--runs", tmp_path / "runs", "--no-progress")
    assert_user_error(status, stderr, f"data.path {text_corpus / 'train.bin'} is a file of a prepared corpus",
                      f"set data.path to its folder {text_corpus}")


def test_expanded_glob_refused(capsys, tmp_path):
    """An unquoted glob reaches `data prepare` as many paths, and the error names the fix: quote it."""
    paths = []
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("some text\n")
        paths.append(tmp_path / name)
    status, stderr = cli(capsys, "data", "prepare", *paths, "--runs", tmp_path / "runs")
    assert_user_error(status, stderr, "data prepare takes one source, got 3", "a glob pattern must be quoted")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, option", [
    (["train", "c.yaml", "--max-ep", "3"], "--max-ep"),
    (["sweep", "launch", "quick", "--work", "2"], "--work"),
], ids=["train", "sweep_launch"])
def test_shortened_option_rejected(args, option, capsys):
    """A shortened option name is not taken for the option it starts: a typo would set another option."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err


def test_data_path_that_is_a_file(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a corpus\n")
    config = write_config(tmp_path / "c.json", **train_config(notes, "file_corpus"))
    assert_user_error(*cli(capsys, "train", config, "--runs", tmp_path / "runs"),
                      f"prepared corpus folder {notes} is a file, not a folder")


def test_wrong_kinds_of_path_name_the_right_one(capsys, tmp_path):
    """A run folder, a spec file, a mistyped sweep or a run folder given as a spec: the error names what to pass."""
    write_runs(tmp_path / "runs", [(1e5, 1e7), (2e5, 1e7), (4e5, 2e7), (1e5, 4e7), (2e5, 2e7), (8e5, 1e7)])
    sweep = tmp_path / "runs" / "s"
    spec = tmp_path / "books.yaml"
    spec.write_text("name: books\n")

    status, stderr = cli(capsys, "fit", sweep / "r0")
    assert_user_error(status, stderr, f"{sweep / 'r0'} is one run; pass its sweep folder {sweep}")
    status, stderr = cli(capsys, "fit", spec)
    assert_user_error(status, stderr, f"{spec} is a file, not a folder of runs", "a CSV of points with --columns")
    status, stderr = cli(capsys, "fit", tmp_path / "runs" / "z")
    assert_user_error(status, stderr, f"({tmp_path / 'runs'} holds the sweeps s)")
    status, stderr = cli(capsys, "sweep", "launch", sweep)
    assert_user_error(status, stderr, "is a folder; give the spec's YAML file")


def test_wrong_files_get_short_errors(capsys, tmp_path):
    """A CSV given as a spec is quoted in part, and a spec given as a fit is named as YAML."""
    table = tmp_path / "big.csv"
    table.write_text("params,tokens,loss\n" + "1,20,3.5\n" * 5000)
    status, stderr = cli(capsys, "sweep", "launch", table)
    assert_user_error(status, stderr, "the spec must be a mapping of keys to values, got 'params,tokens,loss")
    assert len(stderr) < 400

    spec = tmp_path / "mini.yaml"
    spec.write_text("name: mini\n")
    status, stderr = cli(capsys, "ask", "tokens for 7B", "--fit", spec)
    assert_user_error(status, stderr, "is YAML (a config or sweep spec), not a fit.json")
