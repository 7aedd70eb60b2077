"""`ntkit reproduce` through a subprocess: files, report, metrics, the offline note, and bad input.

The subcommand runs as `python -m ntkit.cli_reproduce`, with `--set` shrinking every figure to a
few seconds; MNIST is made absent (and not downloadable) so that the fallback path is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ntkit.cli_reproduce import main, parse_overrides
from ntkit.experiments.settings import DEFAULT, FULL

TINY = ["--set", "fig1.widths=8,80", "--set", "fig1.n_inits=2", "--set", "fig1.steps=3", "--set", "fig1.n_angles=21",
        "--set", "fig2.widths=8,80", "--set", "fig2.n_inits=2", "--set", "fig2.steps=30", "--set", "fig2.n_angles=21",
        "--set", "fig3.widths=8,80", "--set", "fig3.n_runs=1", "--set", "fig3.steps=6", "--set", "fig3.n_digits=40",
        "--set", "fig3.record_every=2"]


def reproduce(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NTKIT_DATA": "", "XDG_CACHE_HOME": str(home / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ntkit.cli_reproduce", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_reproduce_all_tiny(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = reproduce("all", "--out", str(out), "--device", "cpu", "--seed", "3", "--no-download",
                     "--data-dir", str(tmp_path / "no-mnist"), "--threads", "1", "--quiet", *TINY, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # --quiet: no progress messages
    assert "NOT MNIST" in done.stderr  # ... but the fallback is said plainly
    for stem in ("fig1", "fig2", "fig3"):
        for suffix in (".png", ".pdf"):
            assert (out / f"{stem}{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    for stem in ("fig1", "fig2", "fig3"):
        assert f"]({stem}.png)" in report
    assert "NOT MNIST" in report and "| widths | 8, 80 | 500, 10000 |" in report
    assert "--seed 3" in report and "--set fig1.widths=8,80" in report and "--threads 1" in report
    assert "1 threads" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["seed"] == 3 and set(metrics) == {"run", "fig1", "fig2", "fig3"}
    assert metrics["fig1"]["settings"]["widths"] == [8, 80]
    assert metrics["fig1"]["metrics"]["limit Theta(x0, x0)"] == pytest.approx(0.2825, abs=1e-4)
    assert metrics["fig3"]["metrics"]["lambda_1"] > metrics["fig3"]["metrics"]["lambda_2"] > 0
    assert len(metrics["fig2"]["curves"]["functions_n=80"]) == 2
    for key in ("fig1", "fig2", "fig3"):
        for claim in metrics[key]["claims"]:
            assert claim["holds"] in (True, False) and claim["evidence"]


def test_exit_status_of_a_bad_command(tmp_path: Path) -> None:
    done = reproduce("fig1", "--out", str(tmp_path), "--set", "fig1.widths=ten", home=tmp_path)
    assert done.returncode == 2 and "ntkit reproduce: error:" in done.stderr and "not a valid" in done.stderr


# --------------------------------------------------------- in-process: the same entry point, faster
def test_one_figure_with_messages(tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    out = tmp_path / "out"
    assert main(["fig2", "--out", str(out), "--device", "cpu", *TINY[8:16]]) == 0
    printed = capsys.readouterr().out
    assert "fig2: running (custom sizes) on cpu" in printed and "fig2: done in" in printed and "report:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["fig2.pdf", "fig2.png", "metrics.json", "report.md"]
    assert set(json.loads((out / "metrics.json").read_text())) == {"run", "fig2"}


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "fig9.widths=1"], "FIG one of"),
    (["--set", "fig1.width=10"], "has no setting 'width'"),
    (["--set", "fig1.widths=ten"], "not a valid"),
    (["--set", "fig1.n_angles=20"], "n_angles must be odd"),
    (["--set", "fig3.split=validation"], "split must be one of"),
    (["--set", "fig1.widths"], "FIG.FIELD=VALUE"),
])
def test_bad_overrides(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert main(["fig1", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_bad_figure_and_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fig4", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["fig1", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["fig1", "--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_parse_overrides() -> None:
    parsed = parse_overrides(["fig3.widths=10, 100", "fig3.lr=2.5", "fig1.steps=7", "fig3.split=train"], full=False)
    assert parsed["fig3"].widths == (10, 100) and parsed["fig3"].lr == 2.5 and parsed["fig3"].split == "train"
    assert parsed["fig3"].n_digits == DEFAULT["fig3"].n_digits and parsed["fig1"].steps == 7
    assert parse_overrides(["fig1.n_inits=3"], full=True)["fig1"].widths == FULL["fig1"].widths
    assert parse_overrides([], full=False) == {}
