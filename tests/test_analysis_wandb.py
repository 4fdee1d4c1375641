"""Reading runs from W&B through a stand-in for the public API (no W&B server can run here)."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from analysis.fit import fit_runs
from analysis.laws import ParametricLaw
from analysis.synthetic import law_losses
from analysis.wandb_runs import load_wandb, parse_source
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)


@dataclass
class StandInRun:
    """The attributes of wandb.apis.public.Run that the loader reads."""

    id: str
    name: str
    group: str
    config: dict
    summary: dict
    history: list = field(default_factory=list)

    def scan_history(self, keys=None):
        return iter([{key: row.get(key) for key in keys} for row in self.history])


class StandInApi:
    """Returns runs(path, filters) like wandb.Api, from a fixed list, and records the requests."""

    def __init__(self, runs):
        self._runs = runs
        self.requests = []

    def runs(self, path, filters=None):
        self.requests.append((path, filters))
        group = (filters or {}).get("group")
        return [run for run in self._runs if group is None or run.group == group]


def _run(index, params, tokens, loss, status="completed", group="iso", fingerprint="corpus-a"):
    config = {"run_id": f"r{index}", "sweep": group, "corpus": {"fingerprint": fingerprint},
              "params": {"total": params, "non_embedding": int(params * 0.8)}, "tokens": tokens, "config": {}}
    summary = {"status": status, "final_val_loss": loss if status == "completed" else None}
    history = [{"tokens": tokens // 2, "val_loss": loss * 1.1}, {"tokens": tokens, "val_loss": loss}]
    return StandInRun(f"id{index}", f"r{index}", group, config, summary, history)


def _grid_runs():
    params, tokens = np.meshgrid(np.geomspace(1e6, 3e8, 4), np.geomspace(2e7, 1e10, 4))
    params, tokens = params.ravel().astype(int), tokens.ravel().astype(int)
    losses = law_losses(LAW, params, tokens)
    return [_run(i, int(n), int(d), float(loss)) for i, (n, d, loss) in enumerate(zip(params, tokens, losses))]


def test_parse_source():
    assert parse_source("wandb:me/scaling") == ("me/scaling", None)
    assert parse_source("wandb:me/scaling/demo") == ("me/scaling", "demo")
    with pytest.raises(UserError, match="ENTITY/PROJECT"):
        parse_source("wandb:scaling")


def test_rows_from_stand_in():
    runs = _grid_runs() + [_run(99, 1000, 1000, 9.9, status="diverged")]
    api = StandInApi(runs)
    table = load_wandb("wandb:me/scaling/iso", api=api)
    assert api.requests == [("me/scaling", {"group": "iso"})]
    assert len(table) == 16
    assert table.excluded == {"iso/r99": "status diverged"}
    row = next(r for r in table.rows if r.run_id == "r0")
    assert row.learning_curve[-1][1] == pytest.approx(row.final_loss)
    assert row.params_non_embedding == int(row.params_total * 0.8)


def test_group_filter_and_mixed_corpora():
    runs = _grid_runs() + [_run(50, 10**7, 10**8, 3.0, group="other", fingerprint="corpus-b")]
    assert len(load_wandb("wandb:me/scaling/iso", api=StandInApi(runs))) == 16
    with pytest.raises(UserError, match="fingerprints"):
        load_wandb("wandb:me/scaling", api=StandInApi(runs))


def test_api_failure_is_user_error():
    class FailingApi:
        def runs(self, path, filters=None):
            raise RuntimeError("could not resolve api.wandb.ai")

    with pytest.raises(UserError, match="could not list W&B runs of me/scaling"):
        load_wandb("wandb:me/scaling", api=FailingApi())


def test_fit_from_wandb_source(tmp_path, monkeypatch):
    import analysis.fit as fit_module

    api = StandInApi(_grid_runs())
    monkeypatch.setattr(fit_module, "load_wandb", lambda source, allow_mixed=False: load_wandb(source, api=api))
    record = fit_runs("wandb:me/scaling/iso", tmp_path, starts=32, bootstraps=0, plot=False, methods=())
    assert record["n_runs"] == 16
    assert record["approach3"]["parameters"]["alpha"] == pytest.approx(0.3, rel=1e-3)


class StandInWandb:
    """The parts of the wandb module that log_plots uses: init, Image, and a run with log/summary/finish."""

    class Image:
        def __init__(self, path):
            self.path = path

    def __init__(self):
        self.inits = []
        self.logged = []
        self.summary = {}
        self.finished = False

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, row):
        self.logged.append(row)

    def finish(self):
        self.finished = True


def test_log_plots_to_source_project(tmp_path):
    from analysis.wandb_runs import log_plots

    (tmp_path / "isoflop.png").write_bytes(b"png")
    stand_in = StandInWandb()
    record = {"convention": "total", "approach3": {"parameters": {"alpha": 0.3, "beta": 0.35}}}
    log_plots("wandb:me/scaling/iso", tmp_path, ["isoflop.png"], record, wandb_module=stand_in)
    assert stand_in.inits[0]["entity"] == "me"
    assert stand_in.inits[0]["project"] == "scaling"
    assert stand_in.inits[0]["group"] == "iso"
    assert stand_in.logged[0]["isoflop"].path == str(tmp_path / "isoflop.png")
    assert stand_in.summary == {"approach3/alpha": 0.3, "approach3/beta": 0.35}
    assert stand_in.finished


def test_log_plots_needs_wandb_source(tmp_path):
    import argparse

    from analysis import cli

    parser = argparse.ArgumentParser(prog="scaling")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fit", str(tmp_path), "--log-plots"])
    with pytest.raises(UserError, match="--log-plots needs a wandb"):
        args.handler(args)


def test_real_client_without_key_is_one_line_error(tmp_path, monkeypatch):
    # The real wandb client, with no API key anywhere and its server address on a closed loopback port.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="could not list W&B runs of me/project: .*wandb login") as raised:
        load_wandb("wandb:me/project")
    assert "\n" not in str(raised.value)
    assert str(raised.value).count("wandb login") == 1
