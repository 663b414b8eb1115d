"""The `diffuse-eqx demo` command, in quick mode: its files, and what the numbers of `results.json` show."""

import json
import math
import statistics

import pytest

from diffuse_eqx import cli
from diffuse_eqx.cli._demo_report import render_report


FIGURES = ("timers_schedule.png", "timers_samples.png", "integrators_samples.png", "batched_samples.png")
INTEGRATORS = ("Euler", "DDIM", "DDIM (η=1) †", "Heun", "DPM++ 2S", "DPM++ 2M")
BUDGET = 20  # the demo's steps per timer, and network evaluations per integrator


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--target", "gmm", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_files(demo):
    out, results, report = demo
    assert sorted(results["figures"].values()) == sorted(FIGURES)
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
        assert f"]({name})" in report, f"{name} is not embedded in the report"


def test_report_is_rendered_from_the_results(demo):
    _, results, report = demo
    assert render_report(results) == report


def test_integrator_table(demo):
    _, results, report = demo
    rows = {r["label"]: r for r in results["integrators"]["rows"]}
    assert tuple(rows) == INTEGRATORS
    for label, r in rows.items():
        assert r["nfe"] <= BUDGET <= 2 * r["nfe"], f"{label}: NFE {r['nfe']} is not about the budget of 20"
        assert math.isfinite(r["sw"]) and r["sw"] > 0, label
        assert math.isfinite(r["rms"]), label
        assert r["deterministic"] == (label != "DDIM (η=1) †"), label
        line = f"| {label} | {r['n_steps']} | {r['nfe']} | {r['sw']:.4f} | {r['rms']:.3e} |"
        assert line in report, f"the report's integrator table lacks {line!r}"
    assert rows["Heun"]["nfe"] == 2 * rows["Heun"]["n_steps"] - 1, "Heun's last step to t=0 is Euler"

    floor = results["noise_floor"]["mean"]
    best_sw = min(r["sw"] for r in rows.values())
    assert best_sw < 3 * floor, f"best SW {best_sw} is not within 3x the noise floor {floor}"

    # At equal NFE the second-order ODE solvers must beat Euler against the exact ODE, clearly.
    rms = {label: r["rms"] for label, r in rows.items()}
    assert rms["Euler"] == pytest.approx(rms["DDIM"], rel=1e-3), "DDIM is Euler's method on Flow"
    assert max(rms["Heun"], rms["DPM++ 2M"]) < 0.5 * rms["Euler"] < 0.1


def test_integrator_by_timer_matrix(demo):
    _, results, _ = demo
    rows = {r["label"]: r for r in results["integrators"]["rows"]}
    timers = [r["label"] for r in results["timers"]["rows"]]
    matrix = results["integrators"]["matrix"]
    assert list(matrix) == [label for label, r in rows.items() if r["deterministic"]]
    for label, by_timer in matrix.items():
        assert list(by_timer) == timers, label
        assert all(math.isfinite(e) and e > 0 for e, _ in by_timer.values()), label
        # The Uniform column is the main table's run again: the same grid, noise and integrator.
        assert by_timer["Uniform"] == pytest.approx([rows[label]["rms"], rows[label]["nfe"]], rel=1e-6)


def test_timer_table(demo):
    _, results, _ = demo
    rows = results["timers"]["rows"]
    assert len(rows) == 6
    for r in rows:
        assert r["nfe"] == BUDGET and math.isfinite(r["rms"]), r["label"]
        ts = r["times"]
        assert len(ts) == BUDGET + 1 and ts[0] == 1.0, r["label"]
        assert all(a > b for a, b in zip(ts[:-1], ts[1:])), f"{r['label']}: the grid is not decreasing"


def test_batched(demo):
    _, results, report = demo
    b, config = results["batched"], results["config"]
    assert b["nfe"] == BUDGET and b["n"] == config["n_batch"]
    runs = b["runs"]
    assert len(runs) == config["n_timing_runs"] and all(t > 0 for t in runs)
    assert b["run"] == statistics.median(runs) and min(runs) <= b["run"] <= max(runs)
    assert b["first_call"] >= b["run"], "the first call compiles: it cannot be faster than a run"
    assert b["compile"] == pytest.approx(b["first_call"] - b["run"])
    assert b["particles_per_s"] == pytest.approx(b["n"] / b["run"], rel=1e-12)
    assert b["nfe_per_s"] == pytest.approx(b["particles_per_s"] * b["nfe"], rel=1e-12)
    assert f"| particles per second | {b['particles_per_s']:,.0f} |" in report
    assert len(b["mode_mass"]) == results["target"]["n_components"]
    assert sum(b["mode_mass"]) == pytest.approx(1.0)
    assert math.isfinite(b["sw"]) and b["sw"] > 0


def test_bad_arguments():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--particles", "3"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--seed", "zero"])
    with pytest.raises(SystemExit):
        cli.main([])
