"""Test-session set-up.

Without a GPU the Triton kernels run under the Triton interpreter, which must be switched on before any
kernel is decorated, i.e. before ``alr_fast.loss.triton`` is imported (Triton reads the variable when
``@triton.jit`` wraps a function).
"""

import os
import socket
import tempfile

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests start their own process groups (in-process, torchrun, deepspeed): a launcher's variables inherited
# from the environment would make them join the wrong one.
for _var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
    os.environ.pop(_var, None)

# Checkpoint manifests are signed with a key kept outside the run folder (alr_fast/train/checkpoint.py; by default
# in ~/.config): the tests, and the launchers they start, use a key of their own.
os.environ.setdefault("ALR_FAST_CHECKPOINT_KEY",
                      os.path.join(tempfile.mkdtemp(prefix="alr_fast_test_key_"), "checkpoint.key"))

# Keep CPU tests quick and reproducible on a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))


def free_port() -> int:
    """A TCP port free right now on the loopback interface, for a launcher's --master_port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
