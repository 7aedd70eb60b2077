"""What the fuzz suites (tests/test_fuzz_*.py) share."""

from __future__ import annotations

import warnings

from ntkit._range import KernelUnderflowWarning


class Calls:
    """Runs kernel calls; a `KernelUnderflowWarning` (values below the normal range returned as 0) is allowed, and
    remembered in `underflowed`, when it names the layer and a fix; any other warning is an error (the kernels have
    no other warning to give)."""

    def __init__(self) -> None:
        self.underflowed = False

    def __call__(self, fn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
        others = [w for w in caught if not issubclass(w.category, KernelUnderflowWarning)]
        assert not others, [str(w.message) for w in others]
        for w in caught:
            text = str(w.message)
            assert "underflows the" in text and "layer" in text and "W_std" in text and "norm" in text, text
            self.underflowed = True
        return result
