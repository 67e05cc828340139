"""The pieces the launcher wrappers (python -m alr_fast.torchrun / alr_fast.deepspeed) rest on, without a run:
each rank's exit-status report, the wrapper's reading of the reports, and the silent stop signal that a
launcher sends to ranks already stopping. End to end through both launchers: tests/test_preemption_group.py."""

import logging
import os
import signal

import pytest

from alr_fast.train import runtime
from alr_fast.train.runtime import EXIT_PREEMPTED, StopSignals, all_ranks_reported, report_exit_status


@pytest.fixture
def stop_messages():
    """The messages the runtime's logger emits during the test, from a handler on that logger itself, at any
    level, whatever earlier tests in the same process did to logging (caplog depends on propagation to the root
    logger and on the levels of the loggers above; a run of the suite on 2 workers once saw no record)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = runtime.log
    handler, level, disabled = Keep(logging.DEBUG), logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def report(monkeypatch, folder, rank, code, **env):
    monkeypatch.setenv(runtime.EXIT_STATUS_DIR_ENV, str(folder))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    report_exit_status(code)


@pytest.mark.parametrize("size_var", ["LOCAL_WORLD_SIZE", "LOCAL_SIZE"])  # torchrun's, deepspeed's
def test_every_local_rank_must_report_75(tmp_path, monkeypatch, size_var):
    report(monkeypatch, tmp_path, 0, EXIT_PREEMPTED, **{size_var: "3"})
    report(monkeypatch, tmp_path, 2, EXIT_PREEMPTED, **{size_var: "3"})
    assert not all_ranks_reported(tmp_path)  # rank 1 is missing
    report(monkeypatch, tmp_path, 1, 2, **{size_var: "3"})
    assert not all_ranks_reported(tmp_path)  # rank 1 stopped on an error
    report(monkeypatch, tmp_path, 1, EXIT_PREEMPTED, **{size_var: "3"})
    assert all_ranks_reported(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1", "rank2"]  # no temporary left
    (tmp_path / "rank1").write_text("75 2\n")
    assert not all_ranks_reported(tmp_path)  # the ranks disagree on how many there are
    (tmp_path / "rank1").write_text("75\n")
    assert not all_ranks_reported(tmp_path)  # a malformed report is no report


def test_no_report_without_a_wrapper_and_none_read_from_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.EXIT_STATUS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    report_exit_status(EXIT_PREEMPTED)
    assert list(tmp_path.iterdir()) == []
    assert not all_ranks_reported(tmp_path)


@pytest.mark.parametrize("decided", [False, True])
def test_a_signal_once_the_ranks_agreed_to_stop_is_taken_silently(stop_messages, decided):
    """A first SIGTERM prints the stop message, unless the ranks already agreed to stop (a launcher SIGTERMs the
    ranks left once one has exited: the deepspeed launcher does): then it is recorded without a word."""
    with StopSignals() as stop:
        stop.decided = decided
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between two bytecodes of this thread
            if stop.requested:
                break
        assert stop.requested == signal.SIGTERM
    said = [m for m in stop_messages if "received" in m]
    assert len(said) == (0 if decided else 1) and all("SIGTERM received" in m for m in said), said
    assert signal.getsignal(signal.SIGTERM) != stop._handle  # handlers restored


def test_the_same_signal_delivered_twice_counts_once(stop_messages, monkeypatch):
    """A scheduler that signals every process of the job and the launcher forwarding its own copy: two SIGTERMs
    within StopSignals.REPEAT_S are one stop request (one message, the process lives on); one after that exits at
    once (re-delivered with the default handler; end to end: test_reliability.py::test_second_signal_exits_at_once).
    The handler is called directly, with the clock and os.kill replaced, so that a failure cannot kill pytest."""
    import time

    now, killed = [100.0], []
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    with StopSignals() as stop:
        monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
        stop._handle(signal.SIGTERM, None)
        now[0] += StopSignals.REPEAT_S - 0.1
        stop._handle(signal.SIGINT, None)
        assert killed == [] and stop.requested == signal.SIGTERM
        now[0] += 0.2
        stop._handle(signal.SIGTERM, None)
        assert killed == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert stop_messages.count(
        "rank 0: SIGTERM received: finishing the current step, then checkpointing and exiting (send it again, 2 s or "
        "more later, to exit at once)") == 1
