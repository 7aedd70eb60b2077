"""`ntkit kernel` through a subprocess, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ntkit as nk


def ntkit(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ntkit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_circle_example_writes_the_papers_figure_1_limit(tmp_path):
    done = ntkit("kernel", "--example", "circle", "--n-points", "9", "--get", "both", "--out", "k.npy",
                 "--plot", "k.png", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    K = np.load(tmp_path / "k_ntk.npy")
    S = np.load(tmp_path / "k_nngp.npy")
    assert K.shape == S.shape == (9, 9)
    # x0 = (1, 0) is the middle point (gamma = 0); its antipodes are the ends (gamma = -pi, pi)
    assert K[4, 4] == pytest.approx(0.2825, abs=5e-5) and K[4, 0] == pytest.approx(0.0644, abs=5e-5)
    assert (tmp_path / "k.png").stat().st_size > 1000


def test_inputs_from_npy_and_csv_match_the_library(tmp_path, rng):
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "y.csv", Y, delimiter=",")
    done = ntkit("kernel", "--input", "x.npy", "--y", "y.csv", "--activation", "erf", "--depth", "3",
                 "--get", "nngp", "--out", "s.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"),
                               nk.MLP(3, activation="erf").kernel(X, Y, get="nngp"), rtol=1e-12)


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "missing.npy"], "does not exist"),
    (["--example", "circle", "--depth", "0"], "depth"),
    (["--example", "circle", "--activation", "nope"], "activation"),
])
def test_bad_input_fails_with_a_message(tmp_path, args, message):
    done = ntkit("kernel", *args, cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr
