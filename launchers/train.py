"""Thin launcher: pick a recipe, apply overrides, call the one trainer.

    python launchers/train.py --recipe demo --method alr --epochs 40 --out runs/alr

Same flags as ``python -m alr_fast train``. This version runs one process; the data-parallel launchers
(``deepspeed launchers/train_webvision.py`` and friends, with a sharded bank) are the distributed issue's work.
"""

import sys

from alr_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
