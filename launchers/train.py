"""Thin launcher: pick a recipe, apply overrides, call the one trainer.

    python launchers/train.py --recipe demo --method alr --epochs 40 --out runs/alr

Same flags as ``python -m alr_fast train``; runs under ``python``, ``torchrun`` or ``deepspeed``. The
dataset-specific launchers (train_cifar.py, train_animal10n.py, train_clothing1m.py, train_webvision.py) are
the same with their recipe preselected.
"""

import sys

from alr_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
