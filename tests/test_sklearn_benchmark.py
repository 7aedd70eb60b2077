"""The scikit-learn MNIST benchmark runs end to end on a few real digits and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sklearn_mnist.py"


def test_benchmark_on_a_few_digits(mnist_path, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("sklearn_mnist", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    module.main(["--data-dir", str(mnist_path), "--n-train", "200", "--n-test", "100", "--repeats", "1",
                 "--skip-gp", "--out", str(out)])   # the GP with NTK is tested in test_sklearn_kernels.py
    result = json.loads(out.read_text())
    rows = {row["model"]: row for row in result["rows"]}
    assert len(rows) == 7   # --skip-gp leaves out the two GPs and result["data"]["n_train"] == 200
    for row in rows.values():
        assert 0.5 < row["accuracy"] <= 1.0          # ten classes: chance is 0.1
        assert row["fit_predict_s"] > 0
    assert set(result["goals"]) == {"ntk_accuracy_at_least_svc", "ntk_classifier_not_slower_than_svc",
                                    "reference_svc"}
