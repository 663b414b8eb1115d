"""The `diffuse-eqx demo` command, in quick mode: files, tables and what the numbers must show."""

import itertools
import math
import re

import pytest

from diffuse_eqx import cli


FIGURES = ("timers_schedule.png", "timers_samples.png", "integrators_samples.png", "batched_samples.png")
INTEGRATORS = ("Euler", "DDIM", "DDIM (η=1) †", "Heun", "DPM++ 2S", "DPM++ 2M")


def _section(report: str, heading: str) -> str:
    start = report.index(heading)
    end = report.find("\n## ", start + 1)
    return report[start : end if end >= 0 else None]


def _first_table(text: str) -> list[list[str]]:
    """The header and the rows (without the alignment row) of the first markdown table in `text`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
    return [rows[0], *rows[2:]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    return out, (out / "report.md").read_text()


def test_files(demo):
    out, report = demo
    assert (out / "results.json").is_file()
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
        assert f"]({name})" in report, f"{name} is not embedded in the report"


def test_integrator_table(demo):
    _, report = demo
    header, *rows = _first_table(_section(report, "## 2."))
    assert header[:3] == ["Integrator", "Steps", "NFE"]
    table = {r[0]: r for r in rows}
    assert tuple(table) == INTEGRATORS
    for label, (_, steps, nfe, sw, rms) in table.items():
        assert int(nfe) <= 20 <= 2 * int(nfe), f"{label}: NFE {nfe} is not about the budget of 20"
        assert math.isfinite(float(sw)) and float(sw) > 0, label
        assert math.isfinite(float(rms)), label
    assert int(table["Heun"][2]) == 2 * int(table["Heun"][1]) - 1, "Heun's last step to t=0 is Euler"

    floor = float(re.search(r"noise floor\*\*, .*? is \*\*([0-9.]+) ±", report, re.S).group(1))
    best_sw = min(float(r[3]) for r in rows)
    assert best_sw < 3 * floor, f"best SW {best_sw} is not within 3x the noise floor {floor}"

    # At equal NFE the second-order ODE solvers must beat Euler against the exact ODE, clearly.
    rms = {label: float(r[4]) for label, r in table.items()}
    assert rms["Euler"] == pytest.approx(rms["DDIM"], rel=1e-3), "DDIM is Euler's method on Flow"
    assert max(rms["Heun"], rms["DPM++ 2M"]) < 0.5 * rms["Euler"] < 0.1


def test_timer_and_batched_tables(demo):
    _, report = demo
    header, *rows = _first_table(_section(report, "## 1."))
    assert len(rows) == 6 and header[-1].startswith("RMS error")
    assert all(math.isfinite(float(r[-1])) and int(r[-3]) == 20 for r in rows)
    batched = dict(_first_table(_section(report, "## 3."))[1:])
    assert float(batched["particles per second"].replace(",", "")) > 0
    assert int(batched["NFE per particle (`out.nfe`)"]) == 20


def test_bad_arguments():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--particles", "3"])
    with pytest.raises(SystemExit):
        cli.main([])
