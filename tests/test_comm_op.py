"""DeepSpeed's CPU shared-memory comm op: built into the environment's own folder, never for one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_one_process_builds_no_comm_op_and_the_folder_is_the_environments(tmp_path):
    script = textwrap.dedent("""
        import os, sys, torch
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
        from alr_fast.train.runtime import extensions_dir, init_distributed
        assert extensions_dir() == os.path.join(sys.prefix, "torch_extensions"), extensions_dir()
        os.environ["TORCH_EXTENSIONS_DIR"] = sys.argv[1]
        assert init_distributed(torch.device("cpu")) == (0, 1)
        import deepspeed, deepspeed.ops
        import deepspeed.comm.comm as dcc
        model = torch.nn.Linear(3, 2)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                               config={"train_batch_size": 2, "steps_per_print": 2**62})
        engine.backward(engine(torch.ones(2, 3)).sum())
        engine.step()
        assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
        assert dcc.cdb.shm_comm_op is None  # the backend runs without it
        print("OK", sorted(os.listdir(sys.argv[1])) if os.path.isdir(sys.argv[1]) else [])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ext")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK []" in out.stdout  # nothing built
    assert "deepspeed_shm_comm_op built" not in out.stdout + out.stderr
