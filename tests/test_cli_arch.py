"""`ntkit kernel --arch`, --in-shape, --version, --device, the output checks made before any work, and
`ntkit verify`. Kernels are compared with the library's own kernel of the same architecture."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import cli, cli_reproduce

SPEC = "conv3,relu,pool2,conv3,relu,gap,linear"


def spec_arch() -> nk.Sequential:
    return nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3), nk.ReLU(), nk.GlobalAvgPool(),
                         nk.Linear())


@pytest.fixture
def images(tmp_path: Path, rng: np.random.Generator) -> np.ndarray:
    X = rng.standard_normal((5, 1, 6, 6))
    np.save(tmp_path / "img.npy", X)
    np.save(tmp_path / "flat.npy", X.reshape(5, 36))
    return X


def run(tmp_path: Path, *args: str) -> int:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return cli.main([*args])
    finally:
        os.chdir(cwd)


def test_spec_on_images_and_flat_rows(tmp_path, images) -> None:
    assert run(tmp_path, "kernel", "--input", "img.npy", "--arch", SPEC, "--out", "k.npy", "--quiet") == 0
    np.testing.assert_allclose(np.load(tmp_path / "k.npy"), spec_arch().kernel(images), rtol=1e-12)
    assert run(tmp_path, "kernel", "--input", "flat.npy", "--in-shape", "1,6,6", "--arch", SPEC, "--get", "nngp",
               "--W-std", "1.5", "--beta", "0.3", "--out", "s.npy", "--quiet") == 0
    scaled = nk.Sequential(nk.Conv2d(3, W_std=1.5, b_std=0.3), nk.ReLU(), nk.AvgPool2d(2),
                           nk.Conv2d(3, W_std=1.5, b_std=0.3), nk.ReLU(), nk.GlobalAvgPool(),
                           nk.Linear(W_std=1.5, b_std=0.3))
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), scaled.kernel(images, get="nngp"), rtol=1e-12)


def test_sequences_and_architectures_from_a_file(tmp_path, rng) -> None:
    seqs = rng.standard_normal((4, 2, 7))
    np.save(tmp_path / "seq.npy", seqs)
    (tmp_path / "models.py").write_text(
        "import ntkit as nk\nfrom torch import nn\n"
        "ARCH = nk.Sequential(nk.Conv1d(3), nk.Erf(), nk.GlobalAvgPool(), nk.Linear())\n"
        "NET = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(56, 1))\n")
    assert run(tmp_path, "kernel", "--input", "seq.npy", "--arch", "models.py:ARCH", "--out", "a.npy") == 0
    expected = nk.Sequential(nk.Conv1d(3), nk.Erf(), nk.GlobalAvgPool(), nk.Linear()).kernel(seqs)
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected, rtol=1e-12)
    assert run(tmp_path, "kernel", "--input", "seq.npy", "--arch", "models.py:NET", "--out", "n.npy") == 0
    net = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(56, 1))
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), nk.infinite(net).kernel(seqs), rtol=1e-12)
    assert run(tmp_path, "kernel", "--input", "seq.npy", "--arch", "conv3,relu,flatten,linear", "--out",
               "c.npy") == 0
    expected = nk.Sequential(nk.Conv1d(3), nk.ReLU(), nk.Flatten(), nk.Linear()).kernel(seqs)
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), expected, rtol=1e-12)


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "img.npy", "--arch", "conv3,nope,gap,linear"], "unknown layer 'nope'"),
    (["--input", "img.npy"], "give an --arch"),
    (["--input", "flat.npy", "--arch", "conv3,relu,gap,linear"], "needs images"),
    (["--input", "flat.npy", "--in-shape", "1,5,5", "--arch", SPEC], "--in-shape 1,5,5 does not fit"),
    (["--input", "img.npy", "--arch", "missing.py:ARCH"], "does not exist"),
    (["--input", "img.npy", "--arch", ","], "separated by commas"),
])
def test_bad_architectures(tmp_path, images, capsys, args, message) -> None:
    assert run(tmp_path, "kernel", *args, "--out", "k.npy") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "k.npy").exists()


def test_version_and_absent_cuda(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ntkit {nk.__version__}"
    if not torch.cuda.is_available():
        assert run(tmp_path, "kernel", "--example", "circle", "--device", "cuda", "--out", "k.npy") == 2
        assert "CUDA is not available" in capsys.readouterr().err


def forbid_work(monkeypatch) -> None:
    """Any kernel evaluation or figure run fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(nk.MLP, "kernel", refuse)
    monkeypatch.setattr(cli_reproduce, "reproduce", refuse)


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    forbid_work(monkeypatch)
    (tmp_path / "regular.zarr").write_text("not a store")
    (tmp_path / "outdir").mkdir()
    for out, message in [("regular.zarr/k.npy", "is a file, not a folder"), ("regular.zarr", "not a zarr store"),
                         ("outdir", "must end with .npy"), ("outdir/k.txt", "must end with .npy")]:
        assert run(tmp_path, "kernel", "--example", "circle", "--out", out) == 2
        err = capsys.readouterr().err
        assert "--out" in err and message in err, err
    assert run(tmp_path, "kernel", "--example", "circle", "--out", "k.npy", "--plot", "regular.zarr/p.png") == 2
    assert "--plot" in capsys.readouterr().err
    # a read-only folder (faked: the tests may run as root, who writes anywhere)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "ro" and real_access(path, mode))
    (tmp_path / "ro").mkdir()
    assert run(tmp_path, "kernel", "--example", "circle", "--out", "ro/k.npy") == 2
    assert "'ro' is not writable" in capsys.readouterr().err
    assert cli_reproduce.main(["fig1", "--out", str(tmp_path / "ro" / "figures")]) == 2
    assert "--out" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli_reproduce.main(["fig1", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_verify_a_store(tmp_path, capsys) -> None:
    assert run(tmp_path, "kernel", "--example", "circle", "--n-points", "7", "--out", "K.zarr", "--quiet") == 0
    capsys.readouterr()
    assert cli.main(["verify", str(tmp_path / "K.zarr")]) == 0
    assert "intact" in capsys.readouterr().out
    chunks = [p for p in (tmp_path / "K.zarr" / "ntk").rglob("*") if p.is_file() and p.name != "zarr.json"]
    chunks[0].unlink()
    assert cli.main(["verify", str(tmp_path / "K.zarr")]) == 1
    captured = capsys.readouterr()
    assert "tile (0, 0) of ntk" in captured.out and "1 bad tile" in captured.err
    (tmp_path / "x.npy").write_text("")
    assert cli.main(["verify", str(tmp_path / "x.npy")]) == 2
    assert "not an ntkit Gram store" in capsys.readouterr().err


def test_help_texts(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["kernel", "--help"])
    out = capsys.readouterr().out
    assert "conv<k>" in out and "path/to/file.py:NAME" in out
    with pytest.raises(SystemExit):
        cli_reproduce.main(["--help"])
    out = capsys.readouterr().out
    assert "two to three minutes" in out and "ten minutes" not in out
