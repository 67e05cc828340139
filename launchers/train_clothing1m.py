"""Train on Clothing1M (either layout), a class-balanced subset per epoch.

    python launchers/train_clothing1m.py --data-root DIR --out runs/clothing1m [--method alr] [--epochs E] ...
    torchrun --nproc_per_node 8 launchers/train_clothing1m.py --data-root DIR ...
    deepspeed --num_gpus 8 launchers/train_clothing1m.py --data-root DIR ...
    deepspeed --hostfile hostfile launchers/train_clothing1m.py --data-root DIR ...

Recipes: clothing1m (default clothing1m). Every other flag is the trainer's (`python -m alr_fast train --help`).
"""

import sys

from alr_fast.launch import launch

if __name__ == "__main__":
    sys.exit(launch("clothing1m", ("clothing1m",)))
