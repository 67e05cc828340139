"""Command line: ``python -m alr_fast {demo,train,crossval,review,data,config} ...``."""

from __future__ import annotations

# Only light modules at the top: `--help` and `--version` answer without importing torch or DeepSpeed
# (tests/test_cli_output.py); each sub-command imports what it runs.
import argparse
import contextlib
import json
import os
import sys

from alr_fast.util.names import DEMO_METHODS, METHODS, RECIPE_NAMES

RECIPE_DEFAULT = "(default: the recipe's)"


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names one or there is none to show
    (a flag, a counter, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS)
                or isinstance(action, argparse._CountAction)):
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every parser of the command line, sub-commands' included, formats its help with :class:`_Formatter`."""
    parser.formatter_class = _Formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help=f"run folder {RECIPE_DEFAULT}")
    p.add_argument("--epochs", type=int, help=f"number of epochs {RECIPE_DEFAULT}")
    p.add_argument("--batch-size", type=int, help=f"per-rank batch size {RECIPE_DEFAULT}")
    p.add_argument("--seed", type=int, help=f"seed of init and data order {RECIPE_DEFAULT}")
    p.add_argument("--noise-rate", type=float, help=f"synthetic noise rate in [0, 1] {RECIPE_DEFAULT}")
    p.add_argument("--data-root", help=f"folder of an on-disk dataset {RECIPE_DEFAULT}")
    p.add_argument("--model", help="small_cnn, mlp, preact_resnet18, cifar_resnet34, or a torchvision / timm model "
                                   f"name {RECIPE_DEFAULT}")
    p.add_argument("--image-size", type=int, help=f"training crop size in pixels (on-disk datasets) {RECIPE_DEFAULT}")
    p.add_argument("--save-every", type=int, help=f"also checkpoint every N steps {RECIPE_DEFAULT}")
    p.add_argument("--resume", nargs="?", const="latest", choices=("latest", "strict"),
                   help="continue from the newest complete checkpoint in --out that verifies (an older one, with a "
                        "warning, if it does not); --resume=strict stops instead (default: start afresh)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one line per epoch on stderr instead (also what happens when stderr is "
                        "not a terminal)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more messages: -v adds alr_fast's debug messages and DeepSpeed's and torch's start-up "
                        "warnings, -vv DeepSpeed's info messages too (default: alr_fast's messages, DeepSpeed's "
                        "errors)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set method.alpha=0.8 (repeatable)")


def _config_from_args(args, recipe: str):
    """The recipe (or ``--config FILE``) with the flags and ``--set`` overrides applied; a recipe's per-setting
    values (e.g. CIFAR's warm-up per noise rate) are resolved after the overrides."""
    sets = list(args.overrides)
    for flag, key in (("out", "train.out"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("seed", "train.seed"), ("noise_rate", "data.noise_rate"), ("data_root", "data.data_root"),
                      ("model", "model.name"), ("image_size", "data.image_size"), ("save_every", "train.save_every")):
        value = getattr(args, flag)
        if value is not None:
            sets.insert(0, f"{key}={value}")
    if getattr(args, "method", None):
        sets.insert(0, f"method.name={args.method}")
    if args.no_progress:
        sets.append("train.progress=false")
    if args.resume:
        sets.append("train.resume=true")
        sets.append(f"train.resume_strict={args.resume == 'strict'}")
    from alr_fast.config import apply_overrides, load_config_file
    from alr_fast.recipes import resolve_recipe

    if getattr(args, "config", None):
        # A saved run's config.json (or a hand-written one) is complete: no recipe resolution, only overrides.
        return apply_overrides(load_config_file(args.config), sets)
    return resolve_recipe(recipe, sets)


def shutdown_distributed() -> None:
    """:func:`alr_fast.train.runtime.shutdown_distributed`, imported when called (so that ``--help`` imports no
    torch; tests that keep the process group for later runs replace this name)."""
    from alr_fast.train.runtime import shutdown_distributed as shutdown

    shutdown()


def _version() -> str:
    from alr_fast import __version__

    return __version__


@contextlib.contextmanager
def _stdout_for_json(enabled: bool):
    """With ``--json``: while the run goes, file descriptor 1 points at stderr (so Python prints, DeepSpeed's
    logger and compilers' output all land there); yields a stream on the real stdout for the JSON alone."""
    if not enabled:
        yield None
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w")
    try:
        yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alr_fast", description=__doc__)
    # `deepspeed --module alr_fast ...` puts --local_rank=N before the sub-command; the rank comes from the env.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"alr_fast {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="CE vs SELC vs ALR on embedded real MNIST digits (CPU, ~1-2 min)")
    _add_common(p_demo)
    p_demo.add_argument("--methods", default=",".join(DEMO_METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default {','.join(DEMO_METHODS)})")

    p_train = sub.add_parser("train", help="one run of one method from a recipe")
    p_train.add_argument("--recipe", default="demo", choices=sorted(RECIPE_NAMES),
                         help="dataset and settings to start from (docs/recipes.md)")
    p_train.add_argument("--method", choices=METHODS, help=f"training method {RECIPE_DEFAULT}")
    p_train.add_argument("--config", metavar="RUN/config.json",
                         help="re-run a saved (or hand-written) config instead of a recipe; flags and --set apply on top")
    # The deepspeed launcher appends --local_rank=N; the rank comes from the environment instead.
    p_train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    p_train.add_argument("--json", action="store_true",
                         help="stdout holds only the summary JSON (rank 0); everything else the run prints goes to "
                              "stderr")
    _add_common(p_train)

    p_xval = sub.add_parser("crossval", help="K-fold cross-fit: out-of-sample probabilities for every sample")
    p_xval.add_argument("--recipe", default="demo", choices=sorted(RECIPE_NAMES),
                        help="dataset and settings to start from (docs/recipes.md)")
    p_xval.add_argument("--method", choices=METHODS, help=f"training method {RECIPE_DEFAULT}")
    p_xval.add_argument("--folds", type=int, default=5, help="number of folds K (K models, each on (K-1)/K of the data)")
    p_xval.add_argument("--fold-seed", type=int, help="seed of the fold assignment (default: --seed)")
    p_xval.add_argument("--keep-fold-checkpoints", action="store_true",
                        help="keep each finished fold's checkpoints/ (default: deleted once the fold's held-out "
                             "predictions are written; they only serve resuming that fold)")
    p_xval.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    _add_common(p_xval)

    p_review = sub.add_parser("review", help="review sheet of the most suspect labels of a run (PNG, CSV, HTML)")
    p_review.add_argument("run_dir", help="a train or crossval run folder (holds refined_labels.csv)")
    p_review.add_argument("--top", type=int, default=100, help="number of samples on the sheet")
    p_review.add_argument("--html", action="store_true", help="also write review.html (images inlined)")
    p_review.add_argument("--by", choices=("auto", "oos", "bank"), default="auto",
                          help="ranking: out-of-sample probabilities (oos) or the bank (default: oos when present)")
    p_review.add_argument("--data-root", help="dataset folder, when it moved since the run")

    from alr_fast.data.tools.cli import add_data_parser, run_data_command

    add_data_parser(sub)

    p_show = sub.add_parser("config", help="print a recipe's resolved config as JSON")
    p_show.add_argument("--recipe", default="demo", choices=sorted(RECIPE_NAMES),
                        help="dataset and settings to start from (docs/recipes.md)")
    p_show.add_argument("--config", metavar="RUN/config.json", help="show a saved config (with --set applied)")
    p_show.add_argument("--set", dest="overrides", action="append", default=[])

    _show_defaults(parser)
    args = parser.parse_args(argv)
    from alr_fast.config import apply_overrides, load_config_file
    from alr_fast.recipes import resolve_recipe
    from alr_fast.train.checkpoint import CheckpointError
    from alr_fast.train.runtime import PeerLost, Preempted
    from alr_fast.util.logs import configure_console, release_console

    # Before anything logs: rank 0's messages and every rank's warnings on stderr (undone when main returns).
    console = configure_console(getattr(args, "verbose", 0))
    try:
        if args.command == "data":
            return run_data_command(args)
        if args.command == "config":
            from alr_fast.config import config_to_dict
            from alr_fast.recipes import RECIPE_SOURCES, warmup_source

            if args.config:
                cfg = apply_overrides(load_config_file(args.config), args.overrides)
            else:
                cfg = resolve_recipe(args.recipe, args.overrides)
            shown = config_to_dict(cfg)
            if not args.config:
                shown["_sources"] = {"recipe": RECIPE_SOURCES[args.recipe], "method.warmup_epochs":
                                     "--set" if any(o.startswith("method.warmup_epochs=") for o in args.overrides)
                                     else warmup_source(cfg),
                                     "method.lam": "unpublished for ALR; see alr_fast/recipes.py"}
            print(json.dumps(shown, indent=2))
            return 0
        if args.command == "demo":
            from alr_fast.demo import format_table, run_demo, table_notes

            cfg = _config_from_args(args, "demo")
            methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
            bad = [m for m in methods if m not in METHODS]
            if bad or not methods:
                parser.error(f"--methods: unknown {bad}; choose from {METHODS}")
            summary = run_demo(cfg, methods)
            shutdown_distributed()
            print()
            print(f"{cfg.data.dataset}, {cfg.data.noise_kind} noise requested {cfg.data.noise_rate:.0%} "
                  f"(actual {summary['noise']['actual_rate']:.1%}), {cfg.train.epochs} epochs, "
                  f"total {summary['total_time_s']:.1f} s")
            print(format_table(summary["methods"]))
            for m, notes in table_notes(summary["methods"]).items():
                print(f"{m}: {notes}")
            print(f"\nwritten: {cfg.train.out}/summary.json, {cfg.train.out}/comparison.png")
            if "review" in summary:
                print(f"most suspect labels ({summary['review']['method']}'s bank): {summary['review']['png']} "
                      f"(and .csv, .html); any run: python -m alr_fast review RUN_DIR")
            return 0
        if args.command == "review":
            from alr_fast.labels.review import review_run

            review_run(args.run_dir, top=args.top, html=args.html, by=args.by, data_root=args.data_root)
            return 0
        if args.command == "crossval":
            from alr_fast.labels.crossval import crossval

            crossval(_config_from_args(args, args.recipe), args.folds, fold_seed=args.fold_seed,
                     keep_fold_checkpoints=args.keep_fold_checkpoints)
            shutdown_distributed()
            return 0
        from alr_fast.train.runtime import resolve_runtime
        from alr_fast.train.trainer import train

        cfg = _config_from_args(args, args.recipe)
        with _stdout_for_json(args.json) as out:
            rt = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend,
                                 cfg.train.collective_timeout_s)
            summary = train(cfg, runtime=rt)
        if rt.is_main:
            print(json.dumps(summary, indent=2), file=out or sys.stdout, flush=True)
        if out is not None:
            out.close()
        shutdown_distributed()  # on success only: after a one-sided error a barrier could wait forever
        return 0
    except Preempted as e:  # every rank stopped after the same step and the checkpoint is written
        print(f"stopped: {e}", file=sys.stderr)
        shutdown_distributed()  # (a launcher wrapper got this rank's status from the trainer already)
        return e.exit_code
    except PeerLost as e:
        # A process group whose peer died cannot be torn down cleanly (gloo's destructor aborts the process):
        # leave without running destructors, with the error's status.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    except (ValueError, TypeError, NotImplementedError, OSError, FloatingPointError, CheckpointError) as e:
        # OSError: a full disk reads "writing <path>: No space left on device" (alr_fast.util.atomic).
        text = e.strerror if isinstance(e, OSError) and e.strerror and "writing " in e.strerror else e
        print(f"error: {text}", file=sys.stderr)
        return 2
    finally:
        release_console(console)


if __name__ == "__main__":
    sys.exit(main())
