"""Shared body of the thin scripts in launchers/: pick the recipe, hand everything else to the trainer CLI.

Works under ``python``, ``torchrun`` and ``deepspeed`` alike (the rank comes from the environment; the
deepspeed launcher's ``--local_rank=N`` is accepted and ignored).
"""

from __future__ import annotations

import argparse
import sys

from alr_fast.cli import main


def launch(default_recipe: str, choices: tuple[str, ...], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=choices, default=default_recipe)
    known, rest = pre.parse_known_args(argv)
    if any(a in ("-h", "--help") for a in rest):
        print(f"recipes for this launcher: {', '.join(choices)} (default {default_recipe}); the other flags:\n")
    return main(["train", "--recipe", known.recipe, *rest])
