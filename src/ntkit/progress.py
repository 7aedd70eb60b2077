"""Progress bars for long work, and the one switch that silences them.

`enabled=None` (the default everywhere) follows the global setting, which itself defaults to
showing bars only on an interactive terminal; `set_progress(False)` or the environment variable
NTKIT_PROGRESS=0 silences them everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_setting: bool | None = None if os.environ.get("NTKIT_PROGRESS", "") == "" else os.environ["NTKIT_PROGRESS"] != "0"


def set_progress(enabled: bool | None) -> None:
    """Show progress bars always (True), never (False), or on terminals only (None)."""
    global _setting
    _setting = enabled


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             enabled: bool | None = None, minimum: int = 2) -> Iterator[T]:
    """Wrap `iterable` in a bar when enabled and there are at least `minimum` items."""
    choice = _setting if enabled is None else enabled
    if choice is False or (total is not None and total < minimum):
        return iter(iterable)
    return iter(tqdm(iterable, total=total, desc=desc, disable=None if choice is None else False,
                     leave=False, dynamic_ncols=True))


class _Silent:
    """The bar when bars are off: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def meter(total: int | None, desc: str = "", enabled: bool | None = None) -> tqdm | _Silent:
    """A bar to drive by hand (update, set_postfix_str, close): for loops that end early, such as iterative
    solvers, which show their residual beside it."""
    choice = _setting if enabled is None else enabled
    if choice is False:
        return _Silent()
    return tqdm(total=total, desc=desc, disable=None if choice is None else False, leave=False, dynamic_ncols=True)


def note(text: str, enabled: bool | None = None) -> None:
    """One line beside the bars (a choice made, a stage reached), shown when bars are."""
    choice = _setting if enabled is None else enabled
    if choice is False:
        return
    import sys

    if choice or sys.stderr.isatty():
        tqdm.write(text, file=sys.stderr)
