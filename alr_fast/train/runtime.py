"""Where the run happens: device, precision, loss backend and process group, decided once and passed down."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from alr_fast.loss.sharding import Sharding
from alr_fast.util.logs import verbosity

__all__ = ["Runtime", "deepspeed_log_level", "resolve_runtime", "init_distributed", "shutdown_distributed", "release_shm_buffers", "prepare_deepspeed_comm_op", "extensions_dir", "quiet_deepspeed_import", "apply_collective_timeout", "is_collective_failure", "numerics", "StopSignals", "Preempted",
           "PeerLost", "EXIT_PREEMPTED", "DEFAULT_COLLECTIVE_TIMEOUT_S", "EXIT_STATUS_DIR_ENV", "report_exit_status",
           "all_ranks_reported"]

log = logging.getLogger("alr_fast.train")

EXIT_PREEMPTED = 75
"""Exit status after SIGTERM/SIGINT was honoured (checkpoint written; run again with --resume). 75 is
EX_TEMPFAIL of sysexits.h: "try again later", which is what a preempted job should do."""

DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0


class Preempted(Exception):
    """SIGTERM/SIGINT was received; every rank finished the same step and wrote a checkpoint."""

    exit_code = EXIT_PREEMPTED


class PeerLost(RuntimeError):
    """A collective failed or timed out: another rank died or hangs."""


EXIT_STATUS_DIR_ENV = "ALR_FAST_EXIT_STATUS_DIR"
"""Set by the launcher wrappers (``python -m alr_fast.torchrun``, ``python -m alr_fast.deepspeed``): the folder in
which each local rank reports its exit status, so that the wrapper can exit 75 where the launcher itself
would exit 1 (see :func:`report_exit_status`)."""


def _local_world_size() -> str:
    # torchrun sets LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
    return os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1"


def report_exit_status(code: int) -> None:
    """Under a launcher wrapper (:data:`EXIT_STATUS_DIR_ENV` set): write ``<code> <local world size>`` to
    ``rank<LOCAL_RANK>`` in its folder. The trainer calls it as soon as the stop checkpoint is complete, before
    anything else can go wrong (a launcher that SIGTERMs the remaining ranks once one has exited may kill this
    rank on its way out: the report, like the checkpoint, is already written). No-op otherwise."""
    folder = os.environ.get(EXIT_STATUS_DIR_ENV)
    if not folder:
        return
    rank = os.environ.get("LOCAL_RANK", "0")
    try:
        tmp = os.path.join(folder, f".rank{rank}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{code} {_local_world_size()}\n")
        os.replace(tmp, os.path.join(folder, f"rank{rank}"))
    except OSError:
        pass  # the wrapper then reports the launcher's own status


def all_ranks_reported(folder, code: int = EXIT_PREEMPTED) -> bool:
    """True when every local rank wrote a report (:func:`report_exit_status`) with status ``code``, all naming
    the same local world size."""
    from pathlib import Path

    reports = [p.read_text().split() for p in Path(folder).glob("rank*")]
    if not reports or any(len(r) != 2 or not all(x.isdigit() for x in r) for r in reports):
        return False
    sizes = {int(r[1]) for r in reports}
    return len(sizes) == 1 and len(reports) == sizes.pop() and all(int(r[0]) == code for r in reports)


class StopSignals:
    """SIGTERM/SIGINT -> a stop request the training loop honours at its next check; a second signal exits at once.

    The handler only sets a flag (nothing runs inside a step); the loop looks at :attr:`requested` and, with
    several ranks, agrees on it with the others (see the trainer). A second signal :data:`REPEAT_S` seconds or
    more after the first restores the default handler and re-delivers itself, so the process dies immediately
    (status -SIGTERM / -SIGINT). One sooner is the same stop delivered twice and is ignored: a scheduler that
    signals every process of a job (SLURM's cgroup process tracking) reaches the ranks directly, and the launcher
    forwards the signal it got too, milliseconds later. Once the ranks have agreed to stop (:attr:`decided`, set
    by the trainer), a rank's first signal is taken silently: it is a launcher stopping the remaining ranks (the
    deepspeed launcher SIGTERMs them once one has exited), and the message was printed by the rank that
    received the preemption.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    REPEAT_S = 2.0

    def __init__(self, rank: int = 0):
        self.requested = 0
        self.rank = int(rank)
        """The rank named in the stop message (the trainer passes the runtime's)."""
        self.decided = False
        self._first_at = 0.0
        self._previous = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame):
        import time

        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker between its fork and its own handlers) inherited this handler:
            # the stop is the parent's to make; the child neither prints nor stops.
            return
        if self.requested:
            if time.monotonic() - self._first_at < self.REPEAT_S:
                return  # the same stop, delivered twice
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested, self._first_at = signum, time.monotonic()
        if self.decided:
            return
        log.warning(
            "rank %s: %s received: finishing the current step, then checkpointing and exiting (send it again, "
            "%g s or more later, to exit at once)", self.rank, signal.Signals(signum).name,
            self.REPEAT_S)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._pid = os.getpid()
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        return False


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str
    """'fp32', 'bf16' or 'fp16'."""
    backend: str
    """Loss backend actually used: 'torch' or 'triton'."""
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sharding(self, blocks: tuple[int, ...] | None = None) -> Sharding:
        """This rank's :class:`alr_fast.loss.sharding.Sharding`: the one place the runtime's rank and world
        size become the owner rule the bank and every loader are given. ``blocks``: the dataset's tar-shard
        boundaries (``TrainData.sharding_blocks``); they decide nothing on one rank and are dropped there."""
        return Sharding(self.rank, self.world_size, blocks if self.world_size > 1 else None)


NUMERICS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "CUBLAS_WORKSPACE_CONFIG")


def numerics() -> dict:
    """What decides a run's floating-point results besides the code, the config and the seeds: torch's version,
    its intra-op thread count (it sets how CPU reductions are split), the vector instruction set torch's CPU
    kernels were dispatched to (``cpu_capability``: AVX2 and AVX-512 kernels sum in different orders), the CPU
    model, and the environment variables that override any of these. Two runs that agree on all of it give the
    same bits; a different host CPU can give different bits (a deterministic run, another result)."""
    import platform

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu or platform.processor() or None,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "env": {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ},
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHM_COMM_OP = "deepspeed_shm_comm"


def extensions_dir() -> str:
    """Where torch JIT-builds C++ extensions for this environment: ``$TORCH_EXTENSIONS_DIR`` if set, else
    ``<sys.prefix>/torch_extensions`` (inside the virtual environment)."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(sys.prefix, "torch_extensions")


def deepspeed_log_level() -> str:
    """The level of DeepSpeed's logger (``"DeepSpeed"``, which writes to stdout): ``error`` at the default
    verbosity (its start-up warnings off), its own default ``warning`` with ``-v``, ``info`` with ``-vv``
    (:func:`alr_fast.util.logs.verbosity`). The trainer passes it as DeepSpeed's ``log_level`` config."""
    return {0: "error", 1: "warning"}.get(verbosity(), "info")


def quiet_deepspeed_import() -> None:
    """Before the first ``import deepspeed``: its start-up chatter off at the default verbosity. On a machine
    without CUDA, DeepSpeed warns that it falls back to the CPU accelerator and torch's extension builder that
    there is no CUDA runtime; the CPU accelerator is named up front (``DS_ACCELERATOR=cpu``, the one DeepSpeed
    would pick) and the builder's warning is raised to errors only. ``-v`` (``ALR_FAST_VERBOSE=1``) keeps both."""
    if verbosity():
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def prepare_deepspeed_comm_op(world_size: int) -> None:
    """Before DeepSpeed starts its communication backend (which JIT-builds its CPU shared-memory all-reduce op,
    ``deepspeed_shm_comm``, 30-160 s of compiling):

    * the build goes to a folder of this environment (:func:`extensions_dir`), not torch's default
      ``~/.cache/torch_extensions/<py>_<cuda>/``, which every environment of the same Python and torch shares.
      The build's compiler flags hold the environment's absolute paths (``-I<venv>/.../deepspeed/ops/csrc/...``),
      so two environments (the working one and a fresh clone's CI one, or two worktrees' venvs) sharing that
      folder rewrite its ``build.ninja`` in turn and each run rebuilds what the other's last run built: the
      repeated rebuilds alternating between two build commands, each run waiting on the build lock meanwhile;
    * a run of one process does not build it at all (there is nothing to all-reduce): DeepSpeed builds it only
      for ops marked compatible, and this marks it not, for this process only."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    quiet_deepspeed_import()
    if world_size <= 1:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def init_distributed(device: torch.device, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> tuple[int, int]:
    """Join (or create) the process group DeepSpeed uses; a plain ``python`` run becomes a group of one.

    ``timeout_s`` bounds every collective of the group (gloo: each operation; NCCL: enforced by its watchdog,
    which aborts the process). A group that already exists keeps its own timeout. Under ``deepspeed``/``torchrun`` the launcher's RANK/WORLD_SIZE/MASTER_* variables are used as they are.
    """
    import torch.distributed as dist

    prepare_deepspeed_comm_op(1 if "RANK" not in os.environ else int(os.environ.get("WORLD_SIZE", "1")))
    import deepspeed
    from deepspeed.utils.logging import set_log_level_from_string

    set_log_level_from_string(deepspeed_log_level())  # for the set-up; deepspeed.initialize gets it in its config

    # DeepSpeed's engine insists on LOCAL_RANK (set by every launcher); a plain process is local rank 0. A child
    # process ignores an inherited LOCAL_RANK unless RANK is set too.
    os.environ.setdefault("LOCAL_RANK", "0")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cpu" and "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            log.info("loading DeepSpeed's CPU shared-memory comm op from %s (the first run of several processes in "
                     "this environment builds it, 30-160 s; other runs wait on its lock meanwhile)", extensions_dir())
        # DeepSpeed print()s "... deepspeed_shm_comm_op built successfully" on stdout, once per rank: at the
        # default verbosity that line becomes a debug message (shown with -v), stdout stays the results'.
        said = io.StringIO()
        with contextlib.redirect_stdout(said) if not verbosity() else contextlib.nullcontext():
            if "RANK" in os.environ:
                deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                           timeout=timedelta(seconds=timeout_s))
            else:
                # A group of one on a free local port, passed directly rather than through MASTER_PORT so that
                # child processes started later (tests, tools) do not inherit a port this process holds.
                deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                           init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                           timeout=timedelta(seconds=timeout_s))
        for line in said.getvalue().splitlines():
            if line.strip():
                log.debug("DeepSpeed: %s", line.strip())
        release_shm_buffers()
    return dist.get_rank(), dist.get_world_size()


def release_shm_buffers() -> bool:
    """Unlink this rank's DeepSpeed CPU all-reduce workspace from ``/dev/shm`` once every rank has mapped it.

    DeepSpeed's shared-memory comm op (CPU, all ranks on one machine) creates one ~66 MB POSIX shared-memory
    segment per rank and never unlinks it: each 2-rank CPU run would leave 132 MB of RAM behind in ``/dev/shm``
    (tmpfs) for good, and a later run on the same master port would open the stale segment. Every rank has opened
    every peer's segment when ``deepspeed.init_distributed`` returns (its set-up waits for them); after a barrier
    each rank unlinks its own name. The mappings stay valid until the processes exit, so nothing is left behind
    even by a run that is killed. Returns whether this rank's segment was found and unlinked (False where the op
    did not run: one process, CUDA, ranks on several machines)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return False
    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):  # the op's own test for "all ranks local"
        return False
    dist.barrier()
    # the op's name for this rank's workspace: deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    try:
        from _posixshmem import shm_unlink
    except ImportError:  # pragma: no cover - CPython on POSIX always has it
        return False
    try:
        shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    log.debug("unlinked DeepSpeed's shared-memory all-reduce workspace /dev/shm/%s (mapped by every rank)", name)
    return True


def is_collective_failure(e: RuntimeError) -> bool:
    """gloo/NCCL errors after a peer died or a collective timed out (they surface as RuntimeError subclasses)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(m in text for m in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out",
                                   "timed out", "Broken pipe"))


def apply_collective_timeout(device: torch.device, timeout_s: float) -> int:
    """Give every existing process group (not only the default one) the collective timeout; returns how many.

    DeepSpeed all-reduces gradients over groups it creates itself with ``new_group``, which take torch's
    default timeout (30 min), not the default group's. Call it after ``deepspeed.initialize``.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    groups = list(getattr(getattr(c10d, "_world", None), "pg_map", {}) or [])
    for pg in groups:
        pg._get_backend(device)._set_default_timeout(timedelta(seconds=timeout_s))
    return len(groups)


def shutdown_distributed() -> None:
    """Leave the process group cleanly: every rank meets at a barrier first (a rank that tears down gloo while
    a peer is still talking to it can abort with 'terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_runtime(device: str, precision: str, backend: str,
                    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> Runtime:
    from alr_fast.loss.contract import resolve_backend  # the backend is decided here, once; alr_loss takes it as is

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but torch sees no CUDA device; use train.device=cpu")
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if dev.type == "cpu" and precision == "fp16":
        raise ValueError("train.precision='fp16' needs a GPU (loss scaling on CPU is not supported); use fp32")
    rank, world = init_distributed(dev, collective_timeout_s)
    return Runtime(device=dev, precision=precision, backend=resolve_backend(backend, dev), rank=rank,
                   world_size=world)
