"""`ntkit reproduce`: the paper's Figures 1-3 from one command, with plots, numbers and a report.

    ntkit reproduce [fig1|fig2|fig3|all] --out DIR [--full] [--device cpu|cuda] [--seed S]
                    [--data-dir D] [--no-download] [--set fig3.widths=50,500] [--threads N] [--quiet]

`add_parser(subparsers)` registers the subcommand on the `ntkit` command's parser; `run(args)`
executes it. `python -m ntkit.cli_reproduce ...` runs it on its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import typing
from dataclasses import fields, replace
from typing import Any

import torch

from .cli_paths import check_folder
from .experiments.runner import FIGURES, reproduce
from .experiments.settings import get_settings
from .progress import set_progress

DESCRIPTION = """\
Reproduce Section 6 of Jacot, Gabriel and Hongler (2018): Figure 1 (the NTK converges as the width grows
and moves less in training), Figure 2 (trained networks follow the t -> infinity Gaussian of the NTK) and
Figure 3 (MNIST: convergence along the 2nd kernel principal component). Writes figN.png / figN.pdf,
metrics.json (every number) and report.md (settings, numbers, and whether each of the paper's claims is
borne out) into --out.

The default sizes finish in about two to three minutes on a 2-core CPU; --full uses the paper's sizes (meant for a
GPU). MNIST is read from --data-dir, $NTKIT_DATA or the cache folder, downloaded there once if absent;
offline, Figure 3 falls back to scikit-learn's 8x8 digits and the report says so."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `reproduce` on an `argparse` subparsers object; return its parser."""
    parser = subparsers.add_parser("reproduce", help="reproduce the paper's Figures 1-3 with a report",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("figure", nargs="?", default="all", choices=[*FIGURES, "all"],
                        help="which figure to make (default: all)")
    parser.add_argument("--out", default="ntkit-reproduce", metavar="DIR",
                        help="output folder (default: ./ntkit-reproduce)")
    parser.add_argument("--full", action="store_true", help="the paper's sizes (meant for a GPU)")
    parser.add_argument("--device", default="auto", metavar="cpu|cuda",
                        help="where the networks are trained: cpu, cuda, cuda:N, or auto (default: cuda if "
                             "available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="the run's random seed (default: 0)")
    parser.add_argument("--data-dir", default=None, metavar="D",
                        help="folder of the MNIST IDX files (default: $NTKIT_DATA, then the cache folder)")
    parser.add_argument("--no-download", action="store_true",
                        help="never download MNIST (fall back to scikit-learn's digits if it is absent)")
    parser.add_argument("--set", action="append", default=[], metavar="FIG.FIELD=VALUE", dest="overrides",
                        help="change one size, e.g. --set fig3.widths=50,500 --set fig1.n_inits=4 "
                             "(repeatable)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no progress messages")


def parse_overrides(items: list[str], full: bool) -> dict[str, Any]:
    """--set fig.field=value items -> {figure: its settings with those fields replaced}.

    ValueError when an item is malformed, names an unknown setting, or gives an invalid value."""
    changes: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        figure, dot, field = name.strip().partition(".")
        if not sep or not dot or figure not in FIGURES:
            raise ValueError(f"--set {item!r}: expected FIG.FIELD=VALUE with FIG one of {', '.join(FIGURES)}")
        known = {f.name: f for f in fields(get_settings(figure))}
        if field not in known:
            raise ValueError(f"--set {item!r}: {figure} has no setting {field!r}; "
                             f"it has {', '.join(known)}")
        changes.setdefault(figure, {})[field] = _convert(text.strip(), known[field].type, item)
    result = {}
    for figure, values in changes.items():
        try:
            result[figure] = replace(get_settings(figure, full), **values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--set for {figure}: {exc}") from exc
    return result


def _convert(text: str, annotation: str, item: str) -> Any:
    kinds = {"int": int, "float": float, "str": str, "tuple[int, ...]": int, "tuple[float, ...]": float}
    kind = kinds.get(typing.cast(str, annotation))
    if kind is None:  # pragma: no cover - a settings field of a new type
        raise ValueError(f"--set {item!r}: this setting cannot be set from the command line")
    try:
        if annotation.startswith("tuple"):
            return tuple(kind(part) for part in text.split(",") if part.strip())
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"--set {item!r}: {text!r} is not a valid {annotation}") from exc


def run(args: argparse.Namespace) -> int:
    """Execute `ntkit reproduce` from parsed arguments; return the exit status."""
    if args.quiet:
        set_progress(False)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        overrides = parse_overrides(args.overrides, args.full)
        check_folder(args.out, "--out")   # before any work
        reproduce(args.figure, args.out, full=args.full, device=args.device, seed=args.seed,
                  data_dir=args.data_dir, download=not args.no_download,
                  progress=False if args.quiet else None,
                  settings=overrides, command=_command(args), log=_notes_only if args.quiet else _log)
    except (ValueError, TypeError, OSError) as exc:
        print(f"ntkit reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, for the report."""
    words = ["ntkit", "reproduce", args.figure, "--out", args.out, "--seed", str(args.seed),
             "--device", args.device]
    words += ["--full"] if args.full else []
    words += ["--data-dir", args.data_dir] if args.data_dir else []
    words += ["--no-download"] if args.no_download else []
    words += ["--threads", str(args.threads)] if args.threads is not None else []
    for item in args.overrides:
        words += ["--set", item]
    return " ".join(shlex.quote(word) for word in words)


def _log(message: str) -> None:
    print(message, flush=True)


def _notes_only(message: str) -> None:
    """--quiet: only what the user must know (e.g. that Figure 3 is not on MNIST), on stderr."""
    if " NOTE: " in message:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m ntkit.cli_reproduce ...`: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="ntkit reproduce", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
