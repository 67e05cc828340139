"""The deterministic single-launch reduction of the fused kernels ("last program reduces") and its counters.

``"sum"``/``"mean"`` reduce inside the forward launch: every program stores its partial (its rows' loss sum in
fp32, its valid-row count), then draws a ticket from an int32 counter (``atomic_add``, ``sem="acq_rel"``,
``scope="gpu"``) after a CTA barrier; the program that draws the last ticket adds all partials in a fixed order
in fp64, writes the loss and resets the counter to 0. No float atomics, no second launch: results are bitwise
identical run to run. :class:`TicketCounters` hands out zeroed counters per device and CUDA stream (and one
per CUDA-graph-captured call) without a memset per call. Design and memory-ordering argument:
benchmarks/KERNEL_NOTES.md, "Reductions, launches and syncs".
"""

from __future__ import annotations

import contextlib
import threading

import torch
import triton
import triton.language as tl

from .rows import INTERPRETED

TICKET_SLOTS = 64  # ticket counters per zeroed slab (one per CUDA stream, one per CUDA-graph capture)
TICKET_STRIDE = 32  # int32 between counters: one 128-byte line each, every slot 16-byte aligned


@triton.jit
def mean_grad_scale(count_ptr, MEAN: tl.constexpr):
    """The factor folded into the stored gradient: ``1 / max(n_valid, 1)`` for "mean", from the batch's
    valid-row count at ``count_ptr`` (one scalar load, issued with the row loads), else 1; so dL/dz is final
    in the forward. The count comes from the caller or from :func:`count_valid_kernel`, once per call."""
    scale = 1.0
    if MEAN:
        scale = 1.0 / tl.maximum(tl.load(count_ptr).to(tl.float32), 1.0)
    return scale


@triton.jit
def count_valid_kernel(index_ptr, count_ptr, B, BLOCK: tl.constexpr):
    """One program: ``count_ptr[0] = #{i : index[i] >= 0}`` (fp32, exact below 2**24 rows). The "mean"
    pre-pass when the caller gives no count: ``8 B`` bytes read once, instead of by every program."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([BLOCK], tl.int32)
    for b0 in range(0, B, BLOCK):
        o = b0 + offs
        cnt += (tl.load(index_ptr + o, mask=o < B, other=-1) >= 0).to(tl.int32)
    tl.store(count_ptr, tl.sum(cnt, axis=0).to(tl.float32))


@triton.jit
def last_program_reduces(
    partial_ptr, counter_ptr, loss_ptr, loss_part, count_part, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr
):
    """Deterministic single-pass grid reduction ("last program reduces"); no second launch, no float atomics.

    Every program stores its partial (sum of its row losses, number of its valid rows) in
    ``partial_ptr[pid]`` / ``partial_ptr[n_prog + pid]``, then draws a ticket from the int32 counter
    (``atomic_add``, ``sem="acq_rel"``, ``scope="gpu"``). The program that draws ticket ``n_prog - 1`` knows
    every partial is stored and visible, adds them all in a fixed order (independent of which program is
    last and of the order the programs ran in: bitwise reproducible), writes the loss (``/ max(n_valid, 1)``
    for "mean") and the backward scale, and resets the counter to 0 for the next launch on the same counter.

    Memory ordering (GPU), by the PTX memory model's causality order, which is transitive:
    partial stores (any thread of program A) -> ``bar.sync`` of A -> A's release atomic (gpu scope) ->
    read by the last program's acquire atomic on the same counter (gpu scope) -> ``bar.sync`` of the last
    program (Triton broadcasts a scalar atomic's result through shared memory between barriers) -> its loads
    of the partials, which additionally bypass L1 (``.cg``) so no stale line can be read. This is the pattern
    of CUDA's threadFenceReduction sample (store, fence, atomicInc, last block reads). No program waits for
    another, so it needs no co-residency and cannot deadlock.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    tl.store(partial_ptr + pid, loss_part)
    if MEAN:
        tl.store(partial_ptr + n_prog + pid, count_part)  # "sum" needs no count
    # Every thread's partial store is ordered before the (single-thread) release atomic below.
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == n_prog - 1:
        sum_partials(partial_ptr, n_prog, loss_ptr, MEAN, RED_BLOCK)
        # Every other program has taken its ticket: nothing else touches the counter in this launch. The next
        # launch on this counter starts after this one ends (same stream), so it sees 0.
        tl.store(counter_ptr, 0)


@triton.jit
def sum_partials(partial_ptr, n_prog, loss_ptr, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr):
    """The last program's sum of the ``n_prog`` partials (and valid-row counts for "mean") into ``loss_ptr``."""
    # Fixed order: lane j accumulates partials j, j + RED_BLOCK, ... in fp64, then one fixed tree sum.
    # fp64 makes the cross-program sum exact to well below fp32 resolution for any realistic grid.
    offs = tl.arange(0, RED_BLOCK)
    total = tl.zeros([RED_BLOCK], tl.float64)
    count = tl.zeros([RED_BLOCK], tl.float64)
    for i0 in range(0, n_prog, RED_BLOCK):
        o = i0 + offs
        m = o < n_prog
        total += tl.load(partial_ptr + o, mask=m, other=0.0, cache_modifier=".cg").to(tl.float64)
        if MEAN:
            count += tl.load(partial_ptr + n_prog + o, mask=m, other=0.0, cache_modifier=".cg").to(tl.float64)
    loss_sum = tl.sum(total, axis=0)  # NaN if any row loss is NaN, as in the reference
    if MEAN:
        n = tl.maximum(tl.sum(count, axis=0), 1.0)  # a batch without a valid row has loss 0
        tl.store(loss_ptr, (loss_sum / n).to(tl.float32))
    else:
        tl.store(loss_ptr, loss_sum.to(tl.float32))


class TicketCounters:
    """Zeroed int32 ticket counters for the single-launch reduction, cached per device and CUDA stream.

    Contract: a counter is 0 when a launch starts, and the launch leaves it at 0 (its last program resets
    it). So no memset per call: one ``torch.zeros`` per slab of ``TICKET_SLOTS`` counters, the first time a
    slab is needed (first call on a device, then every ``TICKET_SLOTS`` streams / captured calls).

    * Eager: one counter per ``(device, CUDA stream)``. Launches on one stream run one after another, so they
      can share it; launches on two streams may overlap, so they get different counters.
    * Slabs are zeroed on a private stream, outside any memory pool that routes the current stream's
      allocations (torch.compile's cudagraph trees warm up in one); a stream that gets a counter first waits
      for that memset (``wait_event``: a stream dependency, not a launch; once per stream).
    * CUDA graph capture (``torch.cuda.is_current_stream_capturing()``): every captured call gets a counter of
      its own, never handed out again (the graph may be replayed on any stream, concurrently with eager work;
      4 bytes per captured call are never reclaimed). It comes from a slab zeroed *before* the capture began:
      ``torch.cuda.graph``, ``make_graphed_callables`` and the cudagraph trees all synchronise the device
      before capturing, so that memset has completed (a raw ``CUDAGraph.capture_begin`` must be preceded by
      a call outside the capture and a synchronisation). If no zeroed slot is left, the counter is a
      ``torch.zeros`` made inside the capture: the graph then holds a 4-byte memset node before the kernel
      (still correct). No synchronisation and no slab allocation happen during a capture.
    * Not supported: replaying one graph concurrently on two streams (its outputs are shared too), and
      programmatic dependent launch (the next launch on a stream must start after this one ended).
    * CPU (the Triton interpreter): one counter per device; programs run one after another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stream: dict[tuple, torch.Tensor] = {}
        self._free: dict[torch.device, list[tuple[torch.Tensor, object]]] = {}  # (counter, memset event)

    def get(self, device: torch.device) -> torch.Tensor:
        """The counter for a launch on ``device`` from the current stream (a ``[1]`` int32 tensor, 0 now)."""
        if device.type != "cuda":
            counter = self._by_stream.get((device, None))
            if counter is not None:
                return counter
            with self._lock:
                key = (device, None)
                if key not in self._by_stream:
                    self._by_stream[key] = torch.zeros((1,), dtype=torch.int32, device=device)
                return self._by_stream[key]
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.current_stream(device)
        with self._lock:
            free = self._free.setdefault(device, [])
            if torch.cuda.is_current_stream_capturing():
                if not free:
                    return torch.zeros((1,), dtype=torch.int32, device=device)  # a memset node in the graph
                return free.pop()[0]  # zeroed before the capture began (the capture entry synchronised)
            key = (device, stream.cuda_stream)
            counter = self._by_stream.get(key)
            if counter is None:
                if not free:
                    side = torch.cuda.Stream(device)
                    event = torch.cuda.Event()
                    with torch.cuda.stream(side):
                        slab = torch.zeros((TICKET_SLOTS * TICKET_STRIDE,), dtype=torch.int32, device=device)
                        event.record(side)
                    last = (TICKET_SLOTS - 1) * TICKET_STRIDE
                    free.extend((slab[i : i + 1], event) for i in range(last, -1, -TICKET_STRIDE))
                counter, event = free.pop()
                stream.wait_event(event)
                self._by_stream[key] = counter
            return counter


TICKETS = TicketCounters()


@contextlib.contextmanager
def counter_reset_on_failure(counter: torch.Tensor | None):
    """Around a launch that uses a ticket counter: the interpreter runs the programs inside the call, so an
    exception (or Ctrl-C) part-way through the grid would leave the counter non-zero for the next call; reset
    it then. On a GPU nothing has run when the launch raises (a device fault mid-kernel is fatal to the CUDA
    context anyway)."""
    try:
        yield
    except BaseException:
        if counter is not None and INTERPRETED:
            counter.zero_()
        raise
