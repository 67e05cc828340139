"""Train on CIFAR-10/100 (python pickles) with synthetic noise or CIFAR-N labels.

    python launchers/train_cifar.py --data-root DIR --out runs/cifar [--method alr] [--epochs E] ...
    torchrun --nproc_per_node 8 launchers/train_cifar.py --data-root DIR ...
    deepspeed --num_gpus 8 launchers/train_cifar.py --data-root DIR ...
    deepspeed --hostfile hostfile launchers/train_cifar.py --data-root DIR ...

Recipes: cifar10,cifar100 (default cifar10). Every other flag is the trainer's (`python -m alr_fast train --help`).
"""

import sys

from alr_fast.launch import launch

if __name__ == "__main__":
    sys.exit(launch("cifar10", ("cifar10", "cifar100")))
