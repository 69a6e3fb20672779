"""Run a sweep's chunks on Dask: a ``LocalCluster`` of worker processes, or any running cluster.

:class:`DaskExecutor` is the :class:`~dlnlab.sweep.executors.Executor` behind ``dlnlab sweep
--local-cluster N`` and ``--scheduler ADDRESS`` (docs/sweeps.md, "Executors"). Each chunk is one
Dask task, ``run_chunk_on_worker(spec, path, environment)``, keyed ``chunk-<chunk_id>``; the
worker simulates the chunk and writes its file itself (atomically, ``dlnlab.io.atomic``), and
only the small :class:`~dlnlab.sweep.chunks.ChunkOutcome` travels back. The driver calls
``on_done`` as each task finishes (it updates the manifest and the progress), so a sweep on Dask
resumes exactly like an in-process one.

Numerics match the driver bit for bit: every task sets the driver's ``jax_enable_x64`` before it
simulates, and a worker's XLA flags are the driver's with one host device (a worker has one
thread; the engine's results do not depend on the device count, ``tests/test_parallel.py``, but
they do depend on flags that change the compiled code, such as the CLI's YNNPACK fusion flag).

Failures: an exception raised by a task is retried ``retries`` times (``client.submit(...,
retries=)``); a worker process that dies mid-chunk makes the scheduler reschedule its task, at
most ``distributed.scheduler.allowed-failures`` times (``retries`` for a local cluster, the
cluster's own setting for a scheduler address), then the task fails with ``KilledWorker``. Either
way the exception reaches ``on_done`` and the chunk is recorded failed; nothing raises for a
single chunk.

Dask is optional (``pip install 'dlnlab[dask]'``); it is imported when the executor starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import _validation as v

CONNECT_TIMEOUT_SECONDS = 30.0
"""How long to wait for a scheduler given by address before the one-line error."""

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
"""The XLA flag that sets the host device count (one per core in the CLI; 1 in a worker)."""

_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?/?")


def check_scheduler_address(name: str, address) -> str:
    """``address`` if it is a Dask scheduler address (``tcp://host:8786``, ``host:8786``,
    ``tls://host:port``, ``ws://``/``wss://``/``ucx://host:port``, ``inproc://...``), checked
    here without dask and without contacting it (the rules of
    ``distributed.comm.addressing.parse_address`` / ``parse_host_port``: a port is required).
    Raises ``ValueError`` (one line, ``name='x': rule``) otherwise."""
    example = "a scheduler address such as tcp://host:8786"
    if not isinstance(address, str) or not address or address != address.strip() \
            or any(c.isspace() for c in address):
        v.fail(name, address, f"must be {example}")
    scheme, sep, location = address.partition("://")
    if not sep:
        scheme, location = "tcp", address
    if scheme not in _SCHEMES:
        v.fail(name, address, f"unknown protocol {scheme!r} (one of {', '.join(_SCHEMES)}); must "
               f"be {example}")
    if scheme == "inproc":
        if not location:
            v.fail(name, address, f"must be {example}")
        return address
    match = _HOST_PORT.fullmatch(location)
    if match is None:
        v.fail(name, address, f"must be {example}")
    if match["port"] is None:
        v.fail(name, address, f"missing port number; must be {example}")
    if not 0 < int(match["port"]) < 65536:
        v.fail(name, address, f"port {match['port']} is not in 1..65535; must be {example}")
    return address


def worker_xla_flags(driver_flags: str | None = None) -> str:
    """XLA flags for a one-thread worker: ``driver_flags`` (default: this process's
    ``XLA_FLAGS``) with the host device count set to 1, every other flag kept. Flags that change
    the compiled code (the CLI's ``--xla_cpu_experimental_ynn_fusion_type=``) change float32
    rounding, so a worker takes exactly the driver's; the device count does not change results
    (``tests/test_parallel.py``)."""
    flags = os.environ.get("XLA_FLAGS", "") if driver_flags is None else driver_flags
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}=1"])


def worker_environment(x64: bool, driver_flags: str | None = None) -> dict[str, str]:
    """The environment a worker needs to reproduce the driver's numbers: ``XLA_FLAGS``
    (:func:`worker_xla_flags`) and ``JAX_ENABLE_X64``."""
    return {"XLA_FLAGS": worker_xla_flags(driver_flags), "JAX_ENABLE_X64": "1" if x64 else "0"}


def run_chunk_on_worker(spec, path: str, environment: dict[str, str]):
    """The Dask task: :func:`~dlnlab.sweep.chunks.run_chunk` (``spec``, ``path``) with the
    driver's numerics. ``XLA_FLAGS`` is set to the driver's (one device) before JAX's backend
    starts in this worker (a ``--local-cluster`` worker has them from its start; in a worker that
    ran JAX code before this sweep they no longer take effect: docs/sweeps.md, start workers with
    the driver's ``XLA_FLAGS``); ``jax_enable_x64`` is set to the driver's for every task."""
    if os.environ.get("XLA_FLAGS") != environment["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] = environment["XLA_FLAGS"]
    import jax

    jax.config.update("jax_enable_x64", environment["JAX_ENABLE_X64"] == "1")
    from .chunks import run_chunk

    return run_chunk(spec, path)


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("executor=dask: dask.distributed is not installed; install dlnlab[dask] "
                         "(pip install 'dlnlab[dask]')") from None
    return distributed


class DaskExecutor:
    """Chunks as Dask tasks on a ``LocalCluster`` of ``local_cluster`` worker processes (one
    thread each; started on ``__enter__``, closed on ``__exit__``) or on the running cluster
    whose scheduler is at ``scheduler`` (``tcp://host:8786``; left running).

    Args:
      local_cluster: number of worker processes, an integer >= 1.
      scheduler: a scheduler address (``tcp://host:port``, ``host:port``, ``tls://...``).
      retries: times a chunk is retried after an exception in its task, and (local cluster) the
        times it is rescheduled after its worker dies; an integer >= 0.
      connect_timeout: seconds to wait for the scheduler (> 0).

    Used as a context manager (``run_sweep`` enters it); entering it again while it is open
    reuses the same cluster (start it once, run several sweeps, close it at the outer ``with``).

    Raises ``ValueError`` (one line) unless exactly one of ``local_cluster`` and ``scheduler``
    is given with a valid value, or when dask is not installed (on ``__enter__``); ``OSError``
    (one line) when no scheduler answers at ``scheduler`` within ``connect_timeout`` seconds.
    """

    def __init__(self, *, local_cluster: int | None = None, scheduler: str | None = None,
                 retries: int = 1, connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        if local_cluster is not None and scheduler is not None:
            v.fail("local_cluster", local_cluster, f"give either local_cluster or scheduler "
                   f"(scheduler={scheduler!r}), not both")
        if local_cluster is None and scheduler is None:
            v.fail("local_cluster", None, "give local_cluster (a number of worker processes) "
                   "or scheduler (an address)")
        if local_cluster is not None:
            v.positive_int("local_cluster", local_cluster)
        if scheduler is not None:
            check_scheduler_address("scheduler", scheduler)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            v.fail("retries", retries, "must be an integer >= 0")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int | float):
            v.fail("connect_timeout", connect_timeout, "must be a number of seconds > 0")
        v.finite_scalar("connect_timeout", connect_timeout, minimum=0, strict=True)
        self.local_cluster = None if local_cluster is None else int(local_cluster)
        self.scheduler = scheduler
        self.retries = int(retries)
        self.connect_timeout = float(connect_timeout)
        self.client: Any = None
        self._cluster: Any = None
        self._environment: dict[str, str] | None = None
        self._depth = 0

    def __repr__(self) -> str:
        where = (f"local_cluster={self.local_cluster}" if self.local_cluster is not None
                 else f"scheduler={self.scheduler!r}")
        return f"DaskExecutor({where}, retries={self.retries})"

    def __enter__(self) -> DaskExecutor:
        if self.client is not None:          # nested use: run_sweep inside `with executor:`
            self._depth += 1
            return self
        distributed = _import_distributed()
        import dask
        import jax

        self._environment = worker_environment(bool(jax.config.jax_enable_x64))
        if self.local_cluster is not None:
            with dask.config.set({"distributed.scheduler.allowed-failures": self.retries}):
                self._cluster = distributed.LocalCluster(
                    n_workers=self.local_cluster, threads_per_worker=1, processes=True,
                    env=self._environment, dashboard_address=":0", silence_logs=logging.ERROR)
            try:
                self.client = distributed.Client(self._cluster)
            except BaseException:
                self._cluster.close()
                self._cluster = None
                raise
            self._depth = 1
            return self
        try:
            self.client = distributed.Client(self.scheduler, timeout=self.connect_timeout)
        except (OSError, TimeoutError) as error:
            raise OSError(f"scheduler={self.scheduler!r}: no Dask scheduler answered within "
                          f"{self.connect_timeout:g} s ({type(error).__name__})") from None
        self._depth = 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        client, cluster = self.client, self._cluster
        self.client, self._cluster = None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def run(self, tasks: Sequence[tuple[Any, str]],
            on_done: Callable[[Any, Any], None]) -> None:
        """Submit every ``(spec, path)`` task (``path`` made absolute: workers on other machines
        need the sweep folder on a shared file system at the same path) and call
        ``on_done(spec, outcome_or_exception)``
        in this process as each finishes, in completion order. A chunk's exception (after its
        retries; ``KilledWorker`` when its workers kept dying) is passed to ``on_done``, never
        raised. Starts and closes the cluster itself when not used as a context manager."""
        if self.client is None:
            with self:
                self.run(tasks, on_done)
            return
        distributed = _import_distributed()
        specs: dict[str, list] = {}
        futures = []
        for spec, path in tasks:
            key = f"chunk-{spec.chunk_id}"
            if key not in specs:
                specs[key] = []
                futures.append(self.client.submit(     # absolute: a worker has its own cwd
                    run_chunk_on_worker, spec, str(Path(path).absolute()), self._environment,
                    key=key, pure=False, retries=self.retries))
            specs[key].append(spec)
        try:
            for future in distributed.as_completed(futures):
                try:
                    result = future.result()
                except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001 - to on_done
                    result = error          # (cancelled: the scheduler was lost or restarted)
                for spec in specs[future.key]:
                    on_done(spec, result)
                future.release()
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
