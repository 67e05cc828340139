"""The runtime is where rank and world size are read: `Runtime.sharding` turns them into the one `Sharding` the
trainer passes to the bank and every loader; the stop message names the rank it is given (no RANK lookup)."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import torch

from alr_fast.loss.sharding import Sharding
from alr_fast.train.runtime import Runtime, StopSignals


def _rt(rank, world):
    return Runtime(device=torch.device("cpu"), precision="fp32", backend="torch", rank=rank, world_size=world)


def test_runtime_sharding_is_the_rank_of_the_world_with_the_datasets_blocks():
    blocks = (0, 4, 5, 11, 12, 19)
    assert _rt(0, 1).sharding() == Sharding(0, 1) and _rt(2, 3).sharding() == Sharding(2, 3)
    assert _rt(0, 1).sharding(blocks) == Sharding(0, 1)  # one rank owns everything: blocks decide nothing
    two = _rt(1, 2).sharding(blocks)
    assert two == Sharding(1, 2, blocks) and two.owned(19).tolist() == list(range(11, 19))
    assert _rt(1, 2).sharding().owned(7).tolist() == [1, 3, 5]
    np.testing.assert_array_equal(_rt(1, 2).sharding(blocks).rank_starts, [0, 11, 19])


def test_stop_message_names_the_rank_it_is_given(monkeypatch, caplog):
    monkeypatch.setenv("RANK", "7")  # not what the message reads
    with caplog.at_level(logging.WARNING, logger="alr_fast.train"), StopSignals(rank=3) as s:
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.requested == signal.SIGTERM
    assert "rank 3: SIGTERM received" in caplog.text
