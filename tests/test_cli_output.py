"""Command-line output that scripts and clusters can read: --version, a fast --help that shows defaults, messages
through `logging` (rank 0's on stderr, every rank's warnings, `<out>/train.log`), one line per epoch without a
progress bar, DeepSpeed quiet by default, and --json leaving stdout to the summary alone."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import textwrap

import pytest

import alr_fast
from alr_fast.cli import main
from alr_fast.util import logs

HEAVY = ("torch", "deepspeed", "tensorboard", "matplotlib", "torchvision", "tqdm", "PIL", "sklearn")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"alr_fast {alr_fast.__version__}"


def _run_child(code: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``code`` in a fresh interpreter; returns the result and the CPU seconds (user + system) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_help_imports_no_heavy_module():
    """`--help` of the command and of every sub-command (and `--version`) loads neither torch nor DeepSpeed:
    the robust check that --help stays fast (an import of torch alone takes 2-3 s on the 2-core CI machine)."""
    proc, _ = _run_child(textwrap.dedent("""
        import json, sys
        from alr_fast.cli import main
        for argv in (["--help"], ["--version"], *([c, "--help"] for c in
                     ("demo", "train", "crossval", "review", "data", "config")), ["data", "check", "--help"]):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        print(json.dumps(sorted(sys.modules)), file=sys.stderr)
    """))
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stderr.strip().splitlines()[-1]))
    assert "alr_fast.cli" in loaded and "alr_fast.util.names" in loaded  # the check looks where it should
    assert not {m for m in HEAVY if m in loaded}, sorted(m for m in HEAVY if m in loaded)


def test_help_answers_in_under_a_second_of_cpu():
    """`python -m alr_fast --help` uses < 1 s of CPU time (user + system of the child, from its resource usage:
    unlike wall time it does not grow when other jobs share the cores). Measured 0.25 s on the 2-core CI VM; 2.6 s
    before the imports were made lazy."""
    _run_child("pass")  # warm the file cache
    proc, cpu = _run_child("import sys; sys.argv = ['alr_fast', '--help']; import runpy; "
                           "runpy.run_module('alr_fast', run_name='__main__')")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "{demo,train,crossval,review,data,config}" in proc.stdout
    assert cpu < 1.0, f"--help used {cpu:.2f} s of CPU"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--recipe" in text and "(default: demo)" in text
    assert "number of epochs (default: the recipe's)" in text
    assert "-v, --verbose" in text
    with pytest.raises(SystemExit):
        main(["crossval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 5)" in text  # --folds
    with pytest.raises(SystemExit):
        main(["review", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "number of samples on the sheet (default: 100)" in text


def test_light_names_agree_with_the_modules_that_use_them():
    from alr_fast import config
    from alr_fast.recipes import RECIPES
    from alr_fast.util import names

    assert tuple(RECIPES) == names.RECIPE_NAMES
    assert config.METHODS is names.METHODS and config.DEMO_METHODS is names.DEMO_METHODS


@pytest.fixture
def console(monkeypatch):
    """The command line's console handler for one test; the `alr_fast` logger and ALR_FAST_VERBOSE as they were
    afterwards."""
    monkeypatch.setenv("ALR_FAST_VERBOSE", "0")  # restored (unset) after the test
    logger = logging.getLogger(logs.LOGGER)
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


def test_console_rank0_shows_info_other_ranks_only_warnings(console, capsys):
    log = logging.getLogger("alr_fast.train")
    logs.configure_console(0, rank=0)
    logs.configure_console(0, rank=0)  # a second main() in the process: still one handler
    log.info("epoch %d done", 3)
    log.debug("hidden")
    log.warning("careful")
    log.info("for the file only", extra=logs.file_only())
    out = capsys.readouterr()
    assert out.out == ""  # stdout is left to results
    assert out.err == "[alr_fast] epoch 3 done\n[alr_fast] WARNING: careful\n"
    logs.configure_console(0, rank=1)
    log.info("rank 1's info")
    log.error("rank 1 failed")
    assert capsys.readouterr().err == "[alr_fast rank 1] ERROR: rank 1 failed\n"
    handler = logs.configure_console(1, rank=0)
    log.debug("shown with -v")
    assert capsys.readouterr().err == "[alr_fast] shown with -v\n"
    assert os.environ["ALR_FAST_VERBOSE"] == "1"  # for quiet_deepspeed_import and the log level DeepSpeed gets
    logs.release_console(handler)
    assert os.environ["ALR_FAST_VERBOSE"] == "0" and console.level == logging.INFO  # as the call before left them
    assert not [h for h in console.handlers if getattr(h, "_alr_fast_console", False)]


def test_main_leaves_logging_as_it_found_it(console, capsys):
    """`main()` called inside a longer process (a test, a notebook) removes its console handler on return."""
    before = (console.level, list(console.handlers))
    with pytest.raises(SystemExit):
        main(["config", "--recipe", "nope"])  # argparse refuses before logging is set up
    assert main(["config", "--recipe", "demo"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "demo"
    assert (console.level, list(console.handlers)) == before


def test_run_log_appends_timestamped_lines_and_the_exception(console, tmp_path):
    log = logging.getLogger("alr_fast.train")
    assert console.level == logging.NOTSET
    path = tmp_path / "train.log"
    with logs.run_log(path):
        assert console.level == logging.INFO  # a run's messages reach the file without any configuration
        log.info("first run")
        log.debug("not at INFO")
    assert console.level == logging.NOTSET  # the caller's logging is left as it was
    log.warning("after the run")
    with pytest.raises(ValueError), logs.run_log(path, lambda e: logging.CRITICAL):
        log.info("resumed", extra=logs.file_only())  # file_only keeps it out of the console, not the file
        raise ValueError("bad thing")
    with logs.run_log(None):  # another rank: no file
        log.info("rank 1")
    lines = path.read_text().splitlines()
    assert [ln.split(" ", 2)[2] for ln in lines] == ["INFO alr_fast.train: first run", "INFO alr_fast.train: resumed",
                                                     "CRITICAL alr_fast: ValueError: bad thing"]
    assert all(ln[:4].isdigit() and ln[10] == " " and ln[13] == ":" for ln in lines)  # 2026-12-05 04:00:01,574


def test_run_log_keeps_warnings_on_stderr_when_nothing_is_configured(tmp_path):
    """A plain script with no logging set up still sees the run's warnings on stderr while train.log is open
    (Python's last-resort handler stops once any handler exists)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import logging
        from alr_fast.util.logs import run_log
        with run_log({str(tmp_path / "train.log")!r}):
            logging.getLogger("alr_fast.train").info("quiet")
            logging.getLogger("alr_fast.train").warning("loud")
        logging.getLogger("alr_fast").warning("after")
    """)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "[alr_fast] WARNING: loud\nafter\n"
    assert "quiet" in (tmp_path / "train.log").read_text()


def test_deepspeed_log_level_follows_the_verbosity(monkeypatch):
    from alr_fast.train.runtime import deepspeed_log_level

    for value, level in (("", "error"), ("0", "error"), ("1", "warning"), ("2", "info"), ("yes", "warning")):
        monkeypatch.setenv("ALR_FAST_VERBOSE", value)
        assert deepspeed_log_level() == level


def test_demo_table_says_na_when_refinement_changed_nothing():
    from alr_fast.demo import format_table, table_notes

    note = "refinement never started (the warm-up lasted all 2 epochs): ..."
    methods = {"ce": {"mislabel_f1": 0.0, "refinement_note": "method ce does not refine labels: ..."},
               "selc": {"mislabel_f1": 0.0, "refinement_note": note},
               "alr": {"mislabel_f1": 0.5, "refinement_note": None}}
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in format_table(methods).splitlines()[2:]}
    f1 = [label for _, label in __import__("alr_fast.demo", fromlist=["COLUMNS"]).COLUMNS].index("mislabel F1")
    assert (rows["ce"][f1], rows["selc"][f1], rows["alr"][f1]) == ("0.0 %", "n/a", "50.0 %")
    assert table_notes(methods) == {"selc": note}


@pytest.mark.slow
def test_train_json_stdout_is_only_the_summary(tmp_path):
    """No --no-progress: stderr is a pipe, not a terminal, so the run writes one line per epoch instead of a bar."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "alr_fast", "train", "--json", "--recipe", "demo", "--model", "mlp",
           "--epochs", "2", "--batch-size", "256", "--out", str(out),
           "--set", "data.dataset=digits", "--set", "method.warmup=fixed", "--set", "method.warmup_epochs=1",
           "--set", "train.tensorboard=false", "--set", "train.threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # the whole of stdout parses
    assert summary == json.loads((out / "summary.json").read_text()) | {"num_changed": summary["num_changed"]}
    assert summary["epochs"] == 2
    # DeepSpeed's start-up chatter is off at the default verbosity (alr_fast.train.runtime.quiet_deepspeed_import)
    assert "Setting accelerator to CPU" not in proc.stderr and "No CUDA runtime is found" not in proc.stderr
    assert "deepspeed_shm_comm_op built" not in proc.stderr  # one process: the comm op is not built
    assert "it/s]" not in proc.stderr and "step/s]" not in proc.stderr  # no progress bar
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[alr_fast] epoch ")]
    assert [ln.split(":")[0] for ln in epoch_lines] == ["[alr_fast] epoch 0 (1 of 2, warmup)",
                                                        "[alr_fast] epoch 1 (2 of 2, refine)"]
    for line, row in zip(epoch_lines, metrics):
        assert f"train loss {row['train_loss']:.4f}, test acc {100 * row['test_acc']:.2f} %" in line
    log = (out / "train.log").read_text()
    assert log.count(" INFO alr_fast.train: epoch ") == 2 and "INFO alr_fast.train: finished" in log
    assert [ln.split(": ", 1)[1] for ln in log.splitlines() if ": epoch " in ln] == \
        [ln.split("] ", 1)[1] for ln in epoch_lines]
    # One refinement epoch changes few labels or none: the summary, stderr and train.log say so when none changed.
    assert (summary["refinement_note"] is not None) == (summary["num_changed"] == 0)
    if summary["refinement_note"]:
        assert f"[alr_fast] WARNING: {summary['refinement_note']}" in proc.stderr
        assert f"WARNING alr_fast.train: {summary['refinement_note']}" in log
