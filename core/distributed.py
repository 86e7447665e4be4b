"""The scan's extraction on a Ray cluster, with Ray Data: ``python -m core scan … --ray auto|local|ADDRESS``.

The unit of work is the scan's chunk (``core.extract.ChunkPlan``): a Ray
Data pipeline of pending chunk numbers goes through ``map_batches`` with a pool
of actors, each of which loads the model once and writes each chunk it extracts
into the workspace's ``chunks/`` folder exactly as the local path does (same
batches, same file, written atomically), so the driver then consolidates them
as usual and the workspace cannot tell how it was made. The workers must see
the dataset and the workspace at the same paths (one machine, or a shared
file system). A worker that dies is restarted by Ray and its chunk retried; a
driver that dies leaves only whole chunk files, and the next scan (local or
Ray) skips them.

Ray is optional (``pip install -r requirements-ray.txt``); it is imported only here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from core.errors import SliceScopeError

LOCAL = "local"
# Seconds to wait for a named cluster's head before saying it does not answer.
_CONNECT_TIMEOUT_S = 10
# Ray restarts an actor that dies this often, retrying the chunk it held, before the scan fails.
_RESTARTS = 3


def import_ray():
    try:
        import ray
        import ray.data  # Ray Data is an extra of ray: imported here so that a missing extra is said now
    except ImportError:
        raise SliceScopeError("Ray is not installed", "install it with: pip install -r requirements-ray.txt, or scan without `ray`") from None
    return ray


def _head_answers(address: str) -> bool:
    """Whether something listens at a ``host:port`` (or ``ray://host:port``) address; other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def connect(ray, address: str, workers: int) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to), or start a local one of ``workers`` CPUs."""
    if ray.is_initialized():
        return
    if address == LOCAL:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    if not _head_answers(address):
        raise SliceScopeError(f"no Ray cluster answers at {address}", "start one there (ray start --head), check the address, or set `ray` to local")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SliceScopeError(f"could not join the Ray cluster at {address} ({reason})",
                              "start one (ray start --head), check the address, or set `ray` to local") from None


class ChunkExtractor:
    """A Ray Data actor: the model loaded once (``load_model()``), then whole chunks extracted and written by
    ``extract(model, chunks)``, one call per batch of chunk numbers. The scan hands both in (module-level functions,
    pickled by reference), so this module needs nothing from the scan's."""

    def __init__(self, load_model: Callable[[], object], extract: Callable[[object, list[int]], list[int]]):
        import torch

        torch.set_num_threads(1)  # one CPU per actor: Ray schedules the actors, not torch's thread pool
        self.extract = extract
        self.model = load_model()

    def __call__(self, batch: dict) -> dict:
        chunks = [int(chunk) for chunk in batch["chunk"]]
        return {"chunk": chunks, "images": self.extract(self.model, chunks)}


def ray_extract(chunks: list[int], load_model: Callable[[], object], extract: Callable[[object, list[int]], list[int]], done: Callable[[int], None],
                address: str, workers: int, gpu: bool) -> None:
    """Extract ``chunks`` on the Ray cluster at ``address`` (see :func:`connect`) with ``workers`` actors, one CPU or GPU each;
    ``extract`` returns the images of each chunk it wrote, and ``done(images so far)`` follows the chunks as they finish."""
    if not isinstance(workers, int) or workers < 1:
        raise SliceScopeError(f"`ray_workers` = {workers}", "set `ray_workers` to 1 or more")
    if not chunks:
        return
    ray = import_ray()
    connect(ray, address, workers)
    extracted = ray.data.from_items([{"chunk": chunk} for chunk in chunks]).map_batches(
        ChunkExtractor, fn_constructor_kwargs={"load_model": load_model, "extract": extract}, batch_size=1, concurrency=workers,
        num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=_RESTARTS, max_task_retries=_RESTARTS,
    )
    finished = 0
    rows = iter(extracted.iter_rows())
    try:
        for row in rows:
            finished += int(row["images"])
            done(finished)
    finally:
        # An interrupted scan stops Ray Data's executor now: left to garbage collection, its thread could reach Ray
        # after ray.shutdown(), and Ray then ends the whole process.
        rows.close()
