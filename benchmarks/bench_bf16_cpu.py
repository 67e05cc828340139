"""Why the CPU rehearsal runs bf16 only with the smallest real backbone: one forward + backward of 4 images per
backbone and dtype on this CPU (one thread). On CPUs without AVX-512 BF16, bf16 convolutions are many times
slower than fp32. Prints JSON (the best of 2 timings each).

    python benchmarks/bench_bf16_cpu.py > benchmarks/results/ci/bf16_cpu.json
"""

import json
import platform
import time

import torch

from alr_fast.train.models import build_model

CASES = [("cifar_resnet34", 10, 16), ("resnet50", 1000, 40), ("vgg19_bn", 10, 32)]


def main() -> None:
    torch.set_num_threads(1)
    flags = open("/proc/cpuinfo").read().split() if platform.system() == "Linux" else []
    rows = []
    for name, classes, size in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = build_model(name, num_classes=classes, in_channels=3, image_size=size).to(dtype)
            x = torch.randn(4, 3, size, size, dtype=dtype)
            times = []
            for _ in range(2):
                t = time.perf_counter()
                model(x).float().sum().backward()
                times.append(time.perf_counter() - t)
            rows.append({"model": name, "image_px": size, "batch": 4, "dtype": str(dtype).split(".")[-1],
                         "fwd_bwd_s": round(min(times), 3)})
    print(json.dumps({"torch": torch.__version__, "machine": platform.machine(), "cpus": torch.get_num_threads(),
                      "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
