"""Work on a Ray cluster, with Ray Data: ``python -m core scan|influence … --ray auto|local|ADDRESS``.

:func:`ray_map` is the one pipeline: numbered work items go through
``map_batches`` with a pool of actors, each of which builds its state once
(``load``: the model) and then turns each batch of items into one row per item
(``work``); the driver receives the rows as they finish, in any order. Its two
users hand in module-level functions (Ray pickles them by reference), so this
module imports nothing of theirs:

* the scan's extraction (:func:`ray_extract`): an item is a chunk of the scan
  (``core.extract.ChunkPlan``), which the actor writes into the workspace's
  ``chunks/`` folder exactly as the local path does (same batches, same file,
  written atomically), so the driver then consolidates them as usual and the
  workspace cannot tell how it was made. A driver that dies leaves only whole
  chunk files, and the next scan (local or Ray) skips them.
* the influence embeddings' gradient passes (``core.influence.embeddings``):
  an item is a block of image positions; the Hessian's factor, computed on the
  driver, reaches every actor once through Ray's object store (``shared``), and
  the actor returns its block's embeddings, which the driver puts in order and
  caches as the local path does.

The workers must see the dataset and the workspace at the same paths (one
machine, or a shared file system). A worker that dies is restarted by Ray and
its item retried; one that keeps dying ends the run with a one-line error, and
running the same command again resumes from what was already saved.

Ray is optional (``pip install -r requirements-ray.txt``); it is imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings
from collections.abc import Callable

from core.errors import SliceScopeError

LOCAL = "local"
# Seconds to wait for a named cluster's head before saying it does not answer.
_CONNECT_TIMEOUT_S = 10
# Ray restarts an actor that dies this often, retrying the item it held, before the run fails. Ray Data's own default
# is without limit, which would restart a worker that dies on every item (out of memory, say) for ever.
_RESTARTS = 3


# Ray Data's loggers that only repeat what the caller's progress bar shows, and the level each is raised to during a map.
_RAY_DATA_CHATTER = {"ray.data._internal.progress": logging.ERROR, "ray.data._internal.execution.streaming_executor": logging.WARNING}
# The address this process joined a cluster with, as it was given (Ray reports its head's own address, which can differ).
_joined_as: str | None = None


@contextlib.contextmanager
def _ray_data_quiet():
    """Ray Data's progress chatter off while the block runs (logging has no scoped level of its own)."""
    loggers = [(logging.getLogger(name), level) for name, level in _RAY_DATA_CHATTER.items()]
    before = [(logger, logger.level) for logger, _ in loggers]
    for logger, level in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in before:
            logger.setLevel(level)


def import_ray():
    try:
        import ray
        import ray.data  # Ray Data is an extra of ray: imported here so that a missing extra is said now
    except ImportError:
        raise SliceScopeError("Ray is not installed", "install it with: pip install -r requirements-ray.txt, or run without `ray`") from None
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
    global _joined_as
    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if address not in (LOCAL, "auto", joined, _joined_as) and not address.startswith("ray://"):
            raise SliceScopeError(f"this process is already connected to the Ray cluster at {joined}, not {address}",
                                  f"set `ray` to {joined}, or run in a new process")
        return
    if address == LOCAL:
        # Ray's own "local": a new cluster even where `ray start --head` runs one (an address-less ray.init would join
        # that one, and refuse its num_cpus).
        ray.init(address=LOCAL, num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    if not _head_answers(address):
        raise SliceScopeError(f"no Ray cluster answers at {address}", "start one there (ray start --head), check the address, or set `ray` to local")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        _joined_as = address
    except (ConnectionError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SliceScopeError(f"could not join the Ray cluster at {address} ({reason})",
                              "start one (ray start --head), check the address, or set `ray` to local") from None


def join(address: str, workers: int):
    """Ray, connected to the cluster at ``address`` (see :func:`connect`) once ``workers`` is checked. A caller with long
    work before its :func:`ray_map` (influence's factorisation) calls it first, so that a wrong setting is said at once."""
    if not isinstance(workers, int) or workers < 1:
        raise SliceScopeError(f"`ray_workers` = {workers}", "set `ray_workers` to 1 or more")
    ray = import_ray()
    connect(ray, address, workers)
    return ray


class _Worker:
    """A Ray Data actor: its state built once, ``load(*shared)``, then ``work(state, items)`` for each batch of items."""

    def __init__(self, load: Callable[..., object], work: Callable[[object, list[int]], list[dict]], shared: list):
        import ray
        import torch

        torch.set_num_threads(1)  # one CPU per actor: Ray schedules the actors, not torch's thread pool
        self.work = work
        self.state = load(*ray.get(shared))

    def __call__(self, batch: dict) -> dict:
        items = [int(item) for item in batch["item"]]
        rows = self.work(self.state, items)
        return {"item": items, **{column: [row[column] for row in rows] for column in rows[0]}}


def ray_map(items: list[int], load: Callable[..., object], work: Callable[[object, list[int]], list[dict]], each: Callable[[dict], None],
            address: str, workers: int, gpu: bool, shared: tuple = ()) -> None:
    """Do ``work`` on every one of ``items`` on the Ray cluster at ``address`` with ``workers`` actors, one CPU or GPU each.

    Each actor builds its state once, ``load(*shared)``; ``shared`` (large arrays) goes into Ray's object store once
    rather than into every actor's constructor. ``work(state, items)`` returns one dict per item, and ``each(row)`` sees
    every item's row on the driver as it finishes (in any order): that dict with the item's number under ``item``.
    """
    if not items:
        return
    ray = join(address, workers)
    # One block per item: Ray Data hands an actor a whole block at a time, so items sharing a block run one after another.
    dataset = ray.data.from_items([{"item": item} for item in items], override_num_blocks=len(items))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_restarts/max_task_retries as remote arguments but names no replacement for
        # them (its named remote parameters do not include them), and without them a dying worker restarts for ever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        mapped = dataset.map_batches(
            _Worker, fn_constructor_kwargs={"load": load, "work": work, "shared": [ray.put(value) for value in shared]}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))), num_cpus=1, num_gpus=1 if gpu else 0,
            max_restarts=_RESTARTS, max_task_retries=_RESTARTS,
        )
    # The caller shows its own progress bar; Ray Data's bars or progress lines, and its start and end lines, would repeat
    # it on stderr. Its warnings (a cluster too small for the actors, say) still show.
    mapped.context.enable_progress_bars = False
    rows = iter(mapped.iter_rows())
    try:
        with _ray_data_quiet():
            for row in rows:
                each(row)
    except ray.exceptions.RayActorError as error:
        if error.actor_init_failed:  # not a death: ``load`` failed, and Ray's error says why
            raise
        reason = str(error).splitlines()[0]
        raise SliceScopeError(f"a Ray worker died again after Ray restarted it {_RESTARTS} times ({reason})",
                              "see why in the workers' logs (out of memory is common: lower `ray_workers`), then run the same command "
                              "again: it resumes from what was already saved") from None
    finally:
        # An interrupted run stops Ray Data's executor now: left to garbage collection, its thread could reach Ray
        # after ray.shutdown(), and Ray then ends the whole process.
        rows.close()


def ray_extract(chunks: list[int], load_model: Callable[[], object], extract: Callable[[object, list[int]], list[dict]], done: Callable[[int], None],
                address: str, workers: int, gpu: bool) -> None:
    """Extract ``chunks`` with :func:`ray_map`: ``extract(model, chunks)`` writes them and returns ``{"images": n}`` for each;
    ``done(images so far)`` follows the chunks as they finish."""
    finished = 0

    def count(row: dict) -> None:
        nonlocal finished
        finished += int(row["images"])
        done(finished)

    ray_map(chunks, load_model, extract, count, address, workers, gpu)
