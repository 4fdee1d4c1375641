"""fit_runs end to end on synthetic run folders: fit.json contents, precision, plots, guards."""

import json

import numpy as np
import pytest

from analysis.fit import fit_runs, read_fit
from analysis.fit_parametric import Approach3Options
from analysis.laws import ParametricLaw
from analysis.report import write_report
from analysis.ask import ask
from analysis.synthetic import isoflop_grid, law_losses, write_synthetic_run
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)


def _write_isoflop_sweep(root, record_budget=True, noise=0.0):
    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    losses = law_losses(LAW, params, tokens, noise=noise)
    for i, (n, d, c, loss) in enumerate(zip(params, tokens, budgets, losses)):
        write_synthetic_run(root, "iso", f"r{i:02d}", params_total=int(n), tokens=int(d), final_loss=float(loss),
                            flop_budget=float(c) if record_budget else None)
    write_synthetic_run(root, "iso", "zz-diverged", params_total=1000, tokens=1000, final_loss=None,
                        status="diverged")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = tmp_path_factory.mktemp("out")
    _write_isoflop_sweep(root, record_budget=False)
    return fit_runs(root, out, starts=100), out


def test_fit_recovers_law_from_runs(fitted):
    record, _ = fitted
    values = record["approach3"]["parameters"]
    assert record["converged"], record["status"]
    assert values["alpha"] == pytest.approx(0.3, rel=0.01)
    assert values["beta"] == pytest.approx(0.35, rel=0.01)
    assert values["E"] == pytest.approx(1.5, rel=0.01)


def test_fit_record_names_method_and_runs(fitted):
    record, _ = fitted
    assert record["n_runs"] == 15
    assert record["excluded_runs"] == {"iso/zz-diverged": "status diverged"}
    assert record["convention"] == "total"
    method = record["approach3"]["method"]
    assert method["huber_delta"] == 1e-3
    assert method["starts"] == 108
    assert "L-BFGS-B" in method["optimizer"]


def test_approach2_from_grouped_6nd(fitted):
    record, _ = fitted
    approach2 = record["approach2"]
    assert len(approach2["profiles"]) == 3
    assert approach2["a"] == pytest.approx(0.35 / 0.65, abs=0.01)


def test_fit_json_round_trips_full_precision(fitted):
    record, out = fitted
    reread = read_fit(out / "fit.json")
    for name in ("log_a", "log_b", "log_e", "alpha", "beta", "objective"):
        assert reread["approach3"][name] == record["approach3"][name], name
        assert isinstance(reread["approach3"][name], float)
    text = (out / "fit.json").read_text()
    assert repr(record["approach3"]["alpha"]) in text


def test_plots_written(fitted):
    record, out = fitted
    assert set(record["plots"]) == {"isoflop.png", "loss_vs_params.png", "loss_vs_tokens.png", "loss_vs_flops.png",
                                    "optimal_allocation.png", "residuals.png"}
    for name in record["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_lists_fit_and_answers(fitted):
    record, out = fitted
    path = write_report(out, record, [ask("tokens for 7B", fit=record)], limitations="Tiny synthetic study.")
    text = path.read_text()
    assert "![" in text
    assert "(isoflop.png)" in text
    assert "**total**" in text
    assert "Tiny synthetic study." in text
    assert "your fit" in text


def test_too_few_runs_is_user_error(tmp_path):
    for i in range(4):
        write_synthetic_run(tmp_path, "s", f"r{i}", params_total=10**6 * (i + 1), tokens=10**7 * (i + 1),
                            final_loss=3.0)
    with pytest.raises(UserError, match="4 completed run"):
        fit_runs(tmp_path, tmp_path / "out", starts=1)


def test_single_model_size_is_user_error(tmp_path):
    for i in range(6):
        write_synthetic_run(tmp_path, "s", f"r{i}", params_total=10**6, tokens=10**7 * (i + 1), final_loss=3.0)
    with pytest.raises(UserError, match="one model size"):
        fit_runs(tmp_path, tmp_path / "out", starts=1)


def test_non_embedding_convention_recorded(tmp_path):
    _write_isoflop_sweep(tmp_path / "runs")
    record = fit_runs(tmp_path / "runs", tmp_path / "out", convention="non_embedding", starts=32, plot=False,
                      options=Approach3Options(max_iterations=500))
    assert record["convention"] == "non_embedding"
    assert "Kaplan" in record["convention_description"]
    assert record["points"][0]["params"] == pytest.approx(int(record["points"][0]["params"]))


def test_read_fit_missing_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_fit(tmp_path / "fit.json")


def test_read_fit_rejects_other_json(tmp_path):
    (tmp_path / "fit.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="approach 3"):
        read_fit(tmp_path)


def test_read_fit_finds_a_sweeps_default_fit(fitted, tmp_path):
    """`--fit RUNS/<sweep>` reads the fit that `scaling fit` and the demo write to RUNS/<sweep>/_report/."""
    _, out = fitted
    sweep = tmp_path / "sweep"
    (sweep / "_report").mkdir(parents=True)
    (sweep / "_report" / "fit.json").write_text((out / "fit.json").read_text())
    assert read_fit(sweep) == json.loads((out / "fit.json").read_text())
    (sweep / "fit.json").write_text(json.dumps({"hello": 1}))  # a fit.json of the folder itself comes first
    with pytest.raises(UserError, match="approach 3"):
        read_fit(sweep)


def test_data_range_recorded(fitted):
    record, _ = fitted
    params = [point["params"] for point in record["points"]]
    assert record["data_range"]["params"] == [min(params), max(params)]


def test_fit_reports_every_interval(tmp_path, capsys, monkeypatch):
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    record = fit_runs(tmp_path / "runs", tmp_path / "out", starts=32, bootstraps=40, seed=5, plot=False)
    for method in ("approach1", "approach2"):
        bootstrap = record[method]["bootstrap"]
        assert (bootstrap["replicates"], bootstrap["seed"], bootstrap["level"]) == (40, 5, 0.95)
        assert set(bootstrap["intervals"]) == {"a", "b", "params_coefficient", "tokens_coefficient"}
        low, high = bootstrap["intervals"]["a"]
        assert low <= record[method]["a"] <= high, method
    fits = record["kaplan"]["fits"]
    assert set(fits["L(N)"]["intervals"]) == {"exponent", "scale"}
    assert set(fits["L(N) with E"]["intervals"]) == {"exponent", "scale", "irreducible"}
    assert set(fits["L(C)"]["intervals"]) == {"exponent", "scale"}
    assert fits["L(C)"]["intervals"]["scale"] is None  # by design, with the reason in its interval_note
    low, high = fits["L(D)"]["intervals"]["exponent"]
    assert low <= fits["L(D)"]["exponent"] <= high
    assert record["kaplan"]["bootstrap"]["replicates"] == 40
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["approach2"]["bootstrap"] == record["approach2"]["bootstrap"]

    text = write_report(tmp_path / "out", record).read_text()
    a_low, a_high = record["approach2"]["bootstrap"]["intervals"]["a"]
    assert f"| a: exponent of N_opt(C) | {record['approach2']['a']:.4f} | {a_low:.4f} .. {a_high:.4f} |" in text
    exponent_low, exponent_high = fits["L(N)"]["intervals"]["exponent"]
    assert f"| {exponent_low:.4f} .. {exponent_high:.4f} |" in text

    from analysis.cli import _print_fit

    monkeypatch.setenv("COLUMNS", "250")
    _print_fit(record, tmp_path / "out")
    output = capsys.readouterr().out
    assert f"C^{record['approach2']['a']:.4f} [{a_low:.4f} .. {a_high:.4f}]" in output
    assert f"{exponent_low:.4f} .. {exponent_high:.4f}" in output


def test_kaplan_fits_show_published_exponents(tmp_path, capsys, monkeypatch):
    """Kaplan et al. 2020 (arXiv:2001.08361) equations 1.1-1.3: alpha_N 0.076, alpha_D 0.095, alpha_C^min 0.050."""
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    record = fit_runs(tmp_path / "runs", tmp_path / "out", starts=32, bootstraps=0, plot=False)
    published = record["kaplan"]["published"]
    assert {name: entry["exponent"] for name, entry in published.items()} == {
        "L(N)": 0.076, "L(N) with E": 0.076, "L(D)": 0.095, "L(C)": 0.050}
    assert "equation 1.3" in published["L(C)"]["citation"]

    text = write_report(tmp_path / "out", record).read_text()
    fitted = record["kaplan"]["fits"]["L(D)"]["exponent"]
    assert f"| L(D) | {fitted:.4f} | 0.095 |" in text  # no interval columns without a bootstrap
    assert published["L(N)"]["citation"] in text

    from analysis.cli import _print_fit

    monkeypatch.setenv("COLUMNS", "250")
    _print_fit(record, tmp_path / "out")
    row = next(line for line in capsys.readouterr().out.splitlines() if "L(D)" in line)
    assert f"{fitted:.4f}" in row
    assert "0.095" in row


def test_kaplan_2020_compute_law_in_flops():
    """Equation 1.3 of Kaplan et al. 2020 gives C_c^min in PF-days; the law stores it in FLOPs."""
    from analysis.laws import KAPLAN_2020_COMPUTE, PF_DAY_FLOPS

    assert KAPLAN_2020_COMPUTE.loss(3.1e8 * PF_DAY_FLOPS) == pytest.approx(1.0)
    assert KAPLAN_2020_COMPUTE.loss(1e21) == pytest.approx((3.1e8 * 8.64e19 / 1e21) ** 0.050)


@pytest.mark.parametrize("bootstraps, methods, plot", [
    (40, ("approach1", "approach2", "kaplan", "extrapolation"), True), (0, ("approach2",), False)])
def test_progress_counts_every_step(tmp_path, monkeypatch, bootstraps, methods, plot):
    """The progress line's total matches the steps the fit runs, so it ends full, never short or over."""
    import analysis.fit
    from analysis.progress import StepProgress

    steps_seen = []

    class Recording(StepProgress):
        def __init__(self, total, enabled=True):
            super().__init__(total, enabled)
            self.total = total

        def step(self, description):
            steps_seen.append(description)
            return super().step(description)

        def __exit__(self, *exc_info):
            steps_seen.append(self._bar.tasks[0].completed == self.total)
            super().__exit__(*exc_info)

    monkeypatch.setattr(analysis.fit, "StepProgress", Recording)
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    fit_runs(tmp_path / "runs", tmp_path / "out", starts=16, bootstraps=bootstraps, plot=plot, methods=methods,
             progress=True)
    assert steps_seen[-1] is True  # the line ended full
    assert steps_seen[0].startswith("approach 3 from 16")
    assert ("plots" in steps_seen) == plot
    assert any("bootstrap" in step for step in steps_seen[:-1]) == bool(bootstraps)


def test_no_bootstrap_means_no_intervals(tmp_path, capsys, monkeypatch):
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    record = fit_runs(tmp_path / "runs", tmp_path / "out", starts=32, bootstraps=0, plot=False)
    assert record["bootstrap"] is None
    assert record["approach1"]["bootstrap"] is None
    assert record["approach2"]["bootstrap"] is None
    assert record["kaplan"]["bootstrap"] is None
    assert "intervals" not in record["kaplan"]["fits"]["L(N)"]
    assert "No bootstrap was run, so these values come without intervals." in write_report(tmp_path / "out", record).read_text()

    from analysis.cli import _print_fit

    monkeypatch.setenv("COLUMNS", "250")
    _print_fit(record, tmp_path / "out")
    output = capsys.readouterr().out
    assert "interval" not in output  # no empty interval columns in the approach 3 and Kaplan tables
    report = write_report(tmp_path / "out", record).read_text()
    assert not [line for line in report.splitlines() if line.startswith("|") and "interval" in line]


def test_report_answers_kv_cache_question(fitted):
    record, out = fitted
    text = write_report(out, record, [ask("kv cache for 7B at 4096 tokens")]).read_text()
    assert "## Question: kv cache for 7B at 4096 tokens" in text
    assert "| MHA | 32 | 2147483648 | 2 |" in text
    assert "| MQA | 1 | 67108864 | 0.0625 |" in text


def test_ask_answers_with_each_approach_and_its_interval(tmp_path):
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    # 60 replicates: a 95% interval needs 40 usable ones (analysis.bootstrap.min_usable_replicates).
    fit_runs(tmp_path / "runs", tmp_path / "out", starts=32, bootstraps=60, seed=5, plot=False)
    answer = ask("tokens for 7B", fit=tmp_path / "out" / "fit.json")
    names = [row["law"] for row in answer.rows[:3]]
    assert [name.split(",")[0] for name in names] == [
        "your fit (approach 3", "your fit (approach 2", "your fit (approach 1"]
    record = read_fit(tmp_path / "out" / "fit.json")
    for row, approach in zip(answer.rows[1:3], ("approach2", "approach1")):
        # N_opt = k C^a inverted at N = 7e9, and D = C / (6 N).
        flops = (7e9 / record[approach]["params_coefficient"]) ** (1 / record[approach]["a"])
        assert row["tokens"] == pytest.approx(flops / (6 * 7e9), rel=1e-9)
        interval = row["interval"]
        assert interval["replicates"] == record[approach]["bootstrap"]["valid_replicates"]
        low, high = interval["tokens"]
        assert low < row["tokens"] < high, approach
    # Approaches 1 and 2 predict no loss, so a loss question gets only the approach 3 row from the fit.
    loss_rows = ask("loss at 7B params and 1.4T tokens", fit=record).rows
    assert sum(row["law"].startswith("your fit") for row in loss_rows) == 1


def test_allocation_bands_bracket_each_approach(tmp_path):
    from analysis.bootstrap_methods import bootstrap_isoflop
    from analysis.fit_isoflop import fit_isoflop
    from analysis.plots import _allocation_band

    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 7, 6)
    losses = law_losses(LAW, params, tokens, noise=0.01, seed=2)
    fit = fit_isoflop(params, budgets, losses, budgets)
    replicates = bootstrap_isoflop(params, losses, budgets, n_bootstraps=60, seed=0)
    flops = np.geomspace(1e15, 1e17, 5)
    params_low, params_high, tokens_low, tokens_high = _allocation_band(replicates, flops)
    assert np.all((params_low < fit.params_law(flops)) & (fit.params_law(flops) < params_high))
    assert np.all((tokens_low < fit.tokens_law(flops)) & (fit.tokens_law(flops) < tokens_high))
    # Extrapolated far beyond the budgets, the band widens.
    far_low, far_high, _, _ = _allocation_band(replicates, np.array([1e17, 1e23]))
    assert far_high[1] / far_low[1] > far_high[0] / far_low[0]


def test_fit_resamples_runs_when_asked(tmp_path):
    _write_isoflop_sweep(tmp_path / "runs", noise=0.01)
    record = fit_runs(tmp_path / "runs", tmp_path / "out", starts=32, bootstraps=40, seed=5, plot=False,
                      methods=("approach1", "approach2"), resample="runs")
    assert record["approach2"]["bootstrap"]["method"].startswith("runs drawn with replacement within each")
    assert record["approach1"]["bootstrap"]["method"].startswith("runs drawn with replacement")
    default = fit_runs(tmp_path / "runs", tmp_path / "out2", starts=32, bootstraps=40, seed=5, plot=False,
                       methods=("approach1", "approach2"))
    assert default["approach2"]["bootstrap"]["method"].startswith("relative residuals")
    assert default["approach1"]["bootstrap"]["method"].startswith("each run's luck")
    with pytest.raises(UserError, match="unknown resampling 'pairs'"):
        fit_runs(tmp_path / "runs", tmp_path / "out3", starts=32, bootstraps=40, plot=False, resample="pairs")


def test_report_writes_ratios_as_the_cli_does(fitted):
    """D/N far outside 0.01 to 1e5 is written in scientific notation, in report.md as on the console."""
    from analysis import cli

    record, out = fitted
    answer = ask("tokens per param at 1e40 FLOPs", fit=record, law_keys=["kaplan-2020"])
    text = write_report(out, record, [answer]).read_text()
    ratios = [row["tokens_per_param"] for row in answer.rows if row["tokens_per_param"] is not None]
    assert any(not 0.01 <= ratio < 1e5 for ratio in ratios)
    for ratio in ratios:
        assert f"| {cli._ratio_text(ratio)} |" in text
    assert "; N non-embedding |" in text  # Kaplan's row, as in `scaling ask`
