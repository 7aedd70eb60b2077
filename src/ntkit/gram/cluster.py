"""Reaching Dask: a local cluster on this machine, or a running scheduler, checked before it is used.

`local_cluster` starts workers listening on 127.0.0.1 only, with Dask's monitors slowed and its profiler off;
`connect` probes an address before handing it to Dask (a silent socket, or a listener that is not a Dask scheduler,
is a ConnectionError saying so) and warns when plain TCP leaves this machine. `ntkit.gram.distributed` runs the
tiles on the client these give. Dask is imported only here and there (`pip install "ntkit[dask]"`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from .._checks import check_positive_int

DEFAULT_HOST = "127.0.0.1"
# Dask's event-loop latency tick (every 20 ms) and system monitor (every 0.5 s) in the scheduler, nannies and
# workers took 0.4 s of CPU per 10 s of an idle 2-worker cluster here, on the cores the tiles need: slower in
# `local_cluster` (the dashboard's plots get coarser; the workers' memory limits are watched as often as before)
MONITOR_CONFIG = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s"}


def require_distributed() -> Any:
    """The `distributed` module, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError('the Dask backend needs dask.distributed: pip install "ntkit[dask]"') from exc
    return distributed


def local_cluster(n_workers: int = 2, *, threads_per_worker: int = 1, host: str = DEFAULT_HOST,
                  profile: bool = False, **kwargs: Any) -> Any:
    """A `dask.distributed.LocalCluster` of `n_workers` worker processes with `threads_per_worker` threads each,
    listening on `host` only (default 127.0.0.1: not reachable from other machines), with its HTTP routes (the
    dashboard, when bokeh is installed) on a free port of `host` unless `dashboard_address` is given. Dask's
    monitors run less often (`MONITOR_CONFIG`), and its statistical profiler, which samples every task's stack
    each 10 ms for the dashboard's profile page, is off unless `profile`. Other keywords go to LocalCluster.
    Use it as a context manager:

        with local_cluster(2) as cluster, Client(cluster) as client:
            K = arch.kernel(X, out="K.zarr", client=client)
    """
    distributed = require_distributed()
    import dask

    kwargs.setdefault("dashboard_address", f"{host}:0")  # Dask's HTTP routes on a free port of `host`
    with dask.config.set({**MONITOR_CONFIG, "distributed.worker.profile.enabled": bool(profile)}):
        return distributed.LocalCluster(n_workers=check_positive_int(n_workers, "n_workers"),
                                        threads_per_worker=check_positive_int(threads_per_worker,
                                                                              "threads_per_worker"),
                                        processes=True, host=host, **kwargs)


def connect(address: str, *, timeout: float = 10.0, security: Any = None) -> Any:
    """A `dask.distributed.Client` connected to the scheduler at `address` (e.g. "tcp://10.0.0.5:8786", or
    "tls://..." with `security`, a `distributed.security.Security`). Raises ConnectionError when no scheduler
    answers within `timeout` seconds, and ValueError for an address Dask cannot read.

    The address is first probed with Dask's own comm under a hard timeout: a Client waits without end on a
    socket that accepts connections but never answers Dask's handshake, and something else listening there (an
    SSH server, a web server) answers with bytes Dask misreads (a MemoryError for exabytes): both are a
    ConnectionError saying what was found.

    Security: a Dask scheduler runs whatever code its clients send, for anyone who can reach it. Over plain TCP
    the traffic is neither encrypted nor authenticated, so a `tcp://` address that is not this machine's loopback
    gives a `InsecureConnectionWarning`; beyond one machine use TLS ("tls://...", with `security`).
    """
    distributed = require_distributed()
    if not isinstance(address, str) or not address.strip():
        raise TypeError(f"scheduler address must be a non-empty string like 'tcp://HOST:PORT', got {address!r}")
    if plain_remote(address):
        warnings.warn(f"scheduler address {address!r} is plain TCP to another machine: anyone who can reach that "
                      "scheduler can run code on its workers, and the traffic (your data and kernels) is neither "
                      "encrypted nor authenticated. Use TLS ('tls://...' with security=distributed.security."
                      "Security(...)), or reach it through an SSH tunnel to a loopback address",
                      InsecureConnectionWarning, stacklevel=2)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    connection_args = security.get_connection_args("client") if security is not None else {}

    async def probe() -> None:
        connecting = distributed.comm.connect(address, timeout=timeout, **connection_args)
        comm = await asyncio.wait_for(connecting, timeout + 1.0)  # Dask's own timeout, or ours for the handshake
        await comm.close()

    with ThreadPoolExecutor(1) as pool:  # its own event loop, also when the caller's thread runs one
        try:
            pool.submit(asyncio.run, probe()).result()
            return distributed.Client(address, timeout=timeout, security=security, set_as_default=False)
        except ValueError as exc:
            raise ValueError(f"scheduler address {address!r} is not one Dask can use ({exc}); "
                             "expected e.g. 'tcp://HOST:PORT'") from exc
        except (OSError, TimeoutError) as exc:
            detail = str(exc) or f"{type(exc).__name__}: the handshake got no answer"
            raise ConnectionError(f"no Dask scheduler answered at {address!r} within {timeout:g} s ({detail}); "
                                  "check the address, that `dask scheduler` runs there, and the network and TLS "
                                  "settings") from exc
        except Exception as exc:  # MemoryError, decoding errors: the bytes that came back are not Dask's protocol
            raise ConnectionError(f"something answered at {address!r}, but not a Dask scheduler (its reply could not "
                                  f"be read as Dask's protocol: {type(exc).__name__}); check the address and port "
                                  "(8786 by default) and that `dask scheduler` runs there") from exc


class InsecureConnectionWarning(UserWarning):
    """A Dask scheduler reached over plain TCP from another machine (no encryption, no authentication)."""


def plain_remote(address: str) -> bool:
    """Whether `address` is plain TCP ("tcp://", or no scheme, which Dask reads as TCP) to a host other than this
    machine's loopback (127.0.0.0/8, ::1, localhost)."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme != "tcp":
        return False
    host = url.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host != "localhost"
