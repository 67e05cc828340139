"""The torchvision / PIL path: the same batches as :class:`alr_fast.data.loaders.dali.DaliLoader`, without DALI.

For users without DALI and as the benchmark baseline. A ``torch.utils.data.DataLoader`` with ``num_workers``
processes decodes with PIL and applies the torchvision version of the recipe's transform
(:func:`alr_fast.data.loaders.transforms.build_torchvision_transform`). Each sample's random transform is seeded by
(seed, epoch, global index), so a run is reproducible whatever the number of workers.

Rows are read in :class:`alr_fast.data.loaders.plan.EpochPlan` order, the same global indices and order as the
DALI loader; shard padding rows are zero images with index -1. ``epoch(e, start_step=s)`` resumes at batch s
with the same images an uninterrupted epoch would have given.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import weakref

import torch

from alr_fast.data.loaders.base import IndexedLoader
from alr_fast.data.loaders.imagecheck import ImageTooLarge, open_image, rgb_image
from alr_fast.data.loaders.plan import EpochPlan
from alr_fast.data.loaders.transforms import TransformSpec, build_torchvision_transform
from alr_fast.data.readers.records import SampleTable

__all__ = ["TorchLoader", "IndexedImageDataset"]


class IndexedImageDataset(torch.utils.data.Dataset):
    """Items ``(global index, epoch) -> (float32 [C, H, W], index)``; index -1 gives a zero image."""

    def __init__(self, table: SampleTable, spec: TransformSpec, sample_shape: tuple[int, int, int], seed: int):
        self.table = table
        self.spec = spec
        self.sample_shape = sample_shape
        self.seed = seed
        self.tf = build_torchvision_transform(spec)

    def __len__(self) -> int:
        return len(self.table)

    def _image(self, index: int):
        from PIL import Image, UnidentifiedImageError

        if self.table.images is not None:
            return Image.fromarray(self.table.images[index])
        if self.table.tar is not None:  # a member of a tar shard, read by offset
            import io

            path = self.table.path(index)
            try:
                with Image.open(io.BytesIO(self.table.read_bytes(index))) as im:
                    return rgb_image(im, exif_transpose=self.spec.exif_transpose)
            except (OSError, UnidentifiedImageError) as e:
                raise OSError(f"{path} (global index {index}) does not decode ({e}); run `python -m alr_fast data "
                              "check`, or pass skip_unreadable=True to leave such images out") from e
        path = self.table.open_path(index)
        try:
            with open_image(path) as im:
                return rgb_image(im, exif_transpose=self.spec.exif_transpose)
        except ImageTooLarge as e:
            raise OSError(
                f"{self.table.where(index)}: image {path} (global index {index}) is {e}; run "
                "`python -m alr_fast data check`, or pass skip_unreadable=True to leave such images out"
            ) from None
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.table.where(index)}: listed image {path} (global index {index}) does not exist; run "
                "`python -m alr_fast data check`, or pass skip_unreadable=True to leave such images out"
            ) from None
        except (OSError, UnidentifiedImageError) as e:
            raise OSError(
                f"{self.table.where(index)}: image {path} (global index {index}) does not decode ({e}); run "
                "`python -m alr_fast data check`, or pass skip_unreadable=True to leave such images out"
            ) from e

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        if index < 0:
            return torch.zeros(self.sample_shape), -1
        image = self._image(index)
        if not self.spec.random:
            return self.tf(image), index
        # Per-sample seed: the same augmentation for (seed, epoch, index) whatever the worker layout. In the
        # main process (num_workers=0) the global RNG is forked so the caller's random stream is untouched.
        sample_seed = (self.seed * 1_000_003 + epoch) * 2_654_435_761 % 2**61 + index
        if torch.utils.data.get_worker_info() is not None:
            torch.manual_seed(sample_seed)
            return self.tf(image), index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.tf(image), index


class _EpochBatches(torch.utils.data.Sampler):
    """Batch sampler whose epoch is set by the loader before each pass (workers may stay alive).

    It holds the plan, not the loader: a loader <-> sampler cycle would leave the DataLoader (and its
    persistent workers) to the cyclic garbage collector, which may run in a forked worker of another loader.
    """

    def __init__(self, plan: EpochPlan):
        self.plan = plan
        self.epoch = 0
        self.start_step = 0

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self):
        for rows in self.plan.batches(self.epoch, self.start_step):
            yield [(i, self.epoch) for i in rows.tolist()]


def _worker_init(_worker_id: int) -> None:
    # One intra-op thread per worker: num_workers processes = num_workers cores, as DALI's num_threads.
    torch.set_num_threads(1)
    # A scheduler's SIGTERM and a terminal's Ctrl-C go to the whole process group, workers included. The main
    # process decides when to stop (after a checkpoint); a worker killed by the signal would make the DataLoader
    # raise ("worker ... is killed by signal") before it could, and a worker keeping the handler it inherited by
    # fork would print the stop message again. Since a worker ignores SIGTERM, multiprocessing's exit hook (which
    # terminates daemonic children with SIGTERM and then joins them) could wait for ever: TorchLoader shuts its
    # workers down itself before that hook runs (_close_workers), and the DataLoader's watchdog ends a worker
    # whose parent is gone. A worker is forked with both signals blocked (TorchLoader.epoch): torch's worker loop
    # installs a SIGTERM handler that kills the worker for any sender but its parent, before this function runs;
    # a group signal in between stays pending and is discarded here, once ignored, by the unblock.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _stop_signals_blocked():
    """SIGTERM and SIGINT held back in this thread (and in what it forks or starts) for the block; one that
    arrives meanwhile is delivered when it ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class TorchLoader(IndexedLoader):
    """Batches ``(images [b, C, H, W], global index int64 [b])`` from a torch DataLoader of PIL decodes.

    Arguments are those of :class:`alr_fast.data.loaders.base.IndexedLoader`, plus ``num_workers`` (0 = decode
    in this process), ``persistent_workers`` and ``prefetch_factor``.
    """

    def __init__(self, table, transform, *, num_workers: int = 2, persistent_workers: bool = True,
                 prefetch_factor: int = 2, **kwargs):
        super().__init__(table, transform, **kwargs)
        self.dataset = IndexedImageDataset(table, transform, self.sample_shape, self.seed)
        self.batches = _EpochBatches(self.plan)
        self.num_workers = int(num_workers)
        self.dataloader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.batches, num_workers=self.num_workers,
            persistent_workers=persistent_workers and self.num_workers > 0,
            prefetch_factor=prefetch_factor if self.num_workers > 0 else None,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            pin_memory=self.device.type == "cuda",
        )
        if self.num_workers > 0:
            # atexit runs last-registered first, so this runs before multiprocessing's own exit hook.
            # A forked child (a worker of another loader) inherits the hook: only this process may act on it.
            atexit.register(_close_workers, weakref.ref(self.dataloader), os.getpid())

    def close(self) -> None:
        """Stop this loader's worker processes (idempotent; the next epoch starts new ones)."""
        _close_workers(weakref.ref(self.dataloader), os.getpid())

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield ``(images [b, C, H, W] of self.dtype on self.device, index int64 [b])`` for this rank, from
        batch ``start_step`` of the epoch."""
        self.shard_from(epoch, start_step)  # validates start_step
        self.batches.epoch = int(epoch)
        self.batches.start_step = int(start_step)
        # iter() forks the workers (each epoch, or once when they persist): with the stop signals blocked, so that
        # none reaches a worker before _worker_init has made it ignore them
        with _stop_signals_blocked() if self.num_workers > 0 else contextlib.nullcontext():
            batches = iter(self.dataloader)
        for x, idx in batches:
            x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
            yield x, idx.to(device=self.device, dtype=torch.long, non_blocking=True)


def _close_workers(ref, owner_pid: int) -> None:
    """Shut down a DataLoader's persistent workers: the DataLoader's own clean shutdown (it sends each worker its
    stop message and joins it), then SIGKILL for any worker still alive, since workers ignore SIGTERM. Only in the
    process that owns the loader (``owner_pid``): a forked child that ran this would stop its parent's workers."""
    if os.getpid() != owner_pid:
        return
    loader = ref()
    it = getattr(loader, "_iterator", None) if loader is not None else None
    if it is None:
        return
    workers = list(getattr(it, "_workers", []))
    try:
        it._shutdown_workers()
    except Exception:  # noqa: BLE001 -- best effort at shutdown; the kill below still runs
        pass
    for w in workers:
        if w.is_alive() and w.pid is not None:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.join(timeout=5)
    loader._iterator = None

