"""Train on WebVision 1.0 (--recipe webvision) or mini-WebVision (--recipe mini-webvision).

    python launchers/train_webvision.py --data-root DIR --out runs/webvision [--method alr] [--epochs E] ...
    torchrun --nproc_per_node 8 launchers/train_webvision.py --data-root DIR ...
    deepspeed --num_gpus 8 launchers/train_webvision.py --data-root DIR ...
    deepspeed --hostfile hostfile launchers/train_webvision.py --data-root DIR ...

Recipes: webvision,mini-webvision (default webvision). Every other flag is the trainer's (`python -m alr_fast train --help`).
"""

import sys

from alr_fast.launch import launch

if __name__ == "__main__":
    sys.exit(launch("webvision", ("webvision", "mini-webvision")))
