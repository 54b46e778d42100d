"""`--executor ray`: a batch's videos as Ray tasks, one per video, on the cluster `ray.init` reaches.

Ray is optional (the `ray` extra); this module is imported only when asked for. Workers get
everything that decides an answer from the driver, explicitly: the effective config, the
targets, the NOSCOPE_* environment (label cache, models), the driver's working directory and
its torch thread count,
and run the same `batch.run_job` as the local executor, so their results are identical.
Paths are absolute; on a multi-machine cluster they must name shared storage, and the workers
need noscope installed.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

from .batch import Job, RunOptions, describe, record, run_job
from .errors import NoscopeError, UsageError


def require_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs the ray package: pip install 'noscope[ray]'") from None
    return ray


def driver_env() -> dict:
    """The environment variables that change what a query reads or writes, made absolute."""
    env = {k: v for k, v in os.environ.items() if k.startswith("NOSCOPE_")}
    for k in ("NOSCOPE_CACHE", "NOSCOPE_MODELS"):
        if env.get(k):
            env[k] = os.path.abspath(os.path.expanduser(env[k]))
    return env


@contextmanager
def _environment(env: dict, cwd: str):
    """Run with the driver's NOSCOPE_* variables and working directory, then put the worker's back
    (a Ray worker process runs many tasks)."""
    old_env = {k: v for k, v in os.environ.items() if k.startswith("NOSCOPE_")}
    old_cwd = os.getcwd()
    for k in old_env:
        os.environ.pop(k)
    os.environ.update(env)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for k in list(os.environ):
            if k.startswith("NOSCOPE_"):
                os.environ.pop(k)
        os.environ.update(old_env)


def _task(job: Job, opts: RunOptions, env: dict, cwd: str, threads: int) -> dict:
    import torch

    # Ray starts workers with one thread; the driver's count keeps CPU results bit-identical
    # (a sum split over another number of threads rounds differently in the last bit)
    torch.set_num_threads(threads)
    with _environment(env, cwd):
        return run_job(job, opts, quiet=True)


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse an explicit host:port nobody listens on: ray.init would retry it for many minutes
    (and ignore SIGTERM meanwhile), which hangs a nightly job instead of failing it."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # not a form we can check; let Ray parse it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise NoscopeError(f"cannot reach the Ray cluster at {address}: {e.strerror or type(e).__name__}; "
                           "check --ray-address / RAY_ADDRESS") from None


def _init(ray, address):
    """Connect to --ray-address / RAY_ADDRESS, or start a local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    _check_reachable(address)
    # keep Ray's start-up notices (it logs them as warnings) and its workers' output off our stderr,
    # where each line is meant to be one of ours
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    ray_log.setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f" at {address}" if address else ""
        raise NoscopeError(f"cannot start or reach a Ray cluster{where}: {' '.join(str(e).split())[:200]}") from None
    finally:
        ray_log.setLevel(level)
    return True


def run_on_ray(todo: list[tuple[int, Job]], opts: RunOptions, got, address=None) -> None:
    """Submit one task per (index, job); call got(index, record) as each finishes."""
    ray = require_ray()
    started = _init(ray, address)
    pending: dict = {}
    try:
        # one GPU per task only where the cluster has GPUs: a GPU request no node can meet never runs
        gpus = ray.cluster_resources().get("GPU", 0)
        # one retry covers a lost node; a video that crashes its worker is not retried forever
        task = ray.remote(num_gpus=1 if gpus >= 1 else 0, max_retries=1)(_task)
        env, cwd = driver_env(), os.getcwd()
        import torch

        threads = torch.get_num_threads()
        pending = {task.remote(job, opts, env, cwd, threads): (i, job) for i, job in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, job = pending.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except Exception as e:  # the worker died or could not run the task at all
                rec = record(job, "failed", error=f"ray task failed: {describe(e)}")
            got(i, rec)
    except BaseException:  # Ctrl-C, or runs.jsonl could not be written: stop what is still queued
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
