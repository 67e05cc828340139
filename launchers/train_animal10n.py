"""Train on ANIMAL-10N (training/ and testing/ folders).

    python launchers/train_animal10n.py --data-root DIR --out runs/animal10n [--method alr] [--epochs E] ...
    torchrun --nproc_per_node 8 launchers/train_animal10n.py --data-root DIR ...
    deepspeed --num_gpus 8 launchers/train_animal10n.py --data-root DIR ...
    deepspeed --hostfile hostfile launchers/train_animal10n.py --data-root DIR ...

Recipes: animal10n (default animal10n). Every other flag is the trainer's (`python -m alr_fast train --help`).
"""

import sys

from alr_fast.launch import launch

if __name__ == "__main__":
    sys.exit(launch("animal10n", ("animal10n",)))
