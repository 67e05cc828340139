"""launchers/train.py for the multi-rank tests, plus one thing: every rank saves its own final module state
(parameters and buffers) to ``<out>/rank_states/rank<r>.pt`` before the run's end-of-training step.

The tests then compare the ranks' weights read from these files, not from the trainer's own cross-rank check
(``summary.json``'s ``rank_weight_digests``, which rests on ``all_gather_rows``). Nothing else changes: the
wrapped method is called unchanged right after the save.
"""

import sys
from pathlib import Path

import torch

from alr_fast.cli import main
from alr_fast.train import trainer

_finish = trainer._Loop.finish


def _finish_saving_rank_state(self):
    folder = Path(self.out) / "rank_states"
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items()}
    torch.save(state, folder / f"rank{self.rt.rank}.pt")
    return _finish(self)


trainer._Loop.finish = _finish_saving_rank_state

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
