"""Import every module of ntkit in an environment with only its core dependencies (`pip install ntkit`).

A module may fail to import only when it belongs to an optional part and what is missing is that part's extra.
Run by .ci/run in a fresh virtual environment; exits non-zero naming each module that cannot be imported.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import ntkit

#: modules that need an extra, and the top-level packages that extra brings
OPTIONAL = {"ntkit.sklearn": {"sklearn"}, "ntkit.gpytorch": {"gpytorch", "botorch", "linear_operator"},
            "ntkit.gram.direct": {"zarr"}}


def needs_extra(module: str, missing: str | None) -> bool:
    return any((module == prefix or module.startswith(prefix + ".")) and (missing or "").split(".")[0] in extra
               for prefix, extra in OPTIONAL.items())


failed = []
names = [info.name for info in pkgutil.walk_packages(ntkit.__path__, "ntkit.")]
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not needs_extra(name, exc.name):
            failed.append(f"{name}: {exc}")
    except Exception as exc:  # noqa: BLE001  (any failure to import is reported)
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(f"bare install: imported {len(names) - len(failed)} of {len(names)} modules of ntkit {ntkit.__version__}")
if failed:
    print("cannot be imported without extras:\n  " + "\n  ".join(failed))
    sys.exit(1)
