"""Running one library's side of a benchmark in a child process: the environment that limits it to a number of
threads (torch and XLA alike), and its JSON result (the last line it prints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a subprocess limited to `threads` threads (torch and XLA alike)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    return env


def run_json(cmd: list[str], what: str, threads: int) -> dict | None:
    """The JSON object that `cmd` prints last, run with `threads` threads; None (and the error's last line on
    stderr, naming `what`) when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    if done.returncode != 0:
        print(f"{what} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])
