"""mm_adapter.files.progress: a tqdm bar on terminals, sparse plain lines in logs, silence when disabled."""

import io

import pytest

from mm_adapter.files import progress as progress_module
from mm_adapter.files.progress import ENV_VAR, progress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    """Tests start from automatic mode whatever the developer's shell sets."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def run(stream, total=100, initial=0, **kwargs) -> list[str]:
    with progress(total, "train", initial=initial, stream=stream, **kwargs) as bar:
        for _ in range(initial, total):
            bar.update(1)
    return stream.getvalue().splitlines()


def test_log_stream_gets_about_ten_plain_lines():
    """Non-terminal output has no carriage returns and one line per 10% (not one per update),
    each naming the task and the count."""
    stream = io.StringIO()
    lines = run(stream)
    assert "\r" not in stream.getvalue()
    assert 10 <= len(lines) <= 11
    assert all(line.startswith("train: ") for line in lines)
    assert "10/100" in lines[0] and "100/100" in lines[-1] and "100%" in lines[-1]


def test_disabled_writes_nothing(monkeypatch):
    """enabled=False (e.g. non-zero ranks) prints nothing, even when the environment asks for a bar."""
    monkeypatch.setenv(ENV_VAR, "bar")
    stream = FakeTty()
    assert run(stream, enabled=False) == []


def test_terminal_gets_a_tqdm_bar():
    """On a terminal the real tqdm bar is drawn (redrawn in place with \\r)."""
    stream = FakeTty()
    run(stream)
    assert "\r" in stream.getvalue() and "100/100" in stream.getvalue()


def test_resumed_run_reports_only_the_remaining_part():
    """With initial=50 lines cover 60%..100% only, not the part done before the resume."""
    lines = run(io.StringIO(), initial=50)
    assert 5 <= len(lines) <= 6
    assert "60/100" in lines[0]


def test_postfix_appears_in_lines():
    """set_postfix values (also with refresh=False, as the trainer calls it) show up in the log lines."""
    stream = io.StringIO()
    with progress(10, "train", stream=stream) as bar:
        for step in range(10):
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
            bar.update(1)
    last = stream.getvalue().splitlines()[-1]
    assert "loss=0.100" in last and "10/10" in last


def test_unknown_total_prints_on_a_timer(monkeypatch):
    """total=None prints at most one line per LINE_INTERVAL_S seconds, plus a final line on close."""
    now = [0.0]
    monkeypatch.setattr(progress_module, "_clock", lambda: now[0])
    stream = io.StringIO()
    with progress(None, "eval", unit="q", stream=stream) as bar:
        for _ in range(100):
            now[0] += 1.0
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 30 s, 60 s, 90 s, then the final 100
    assert lines[0].startswith("eval: 30q") and lines[-1].startswith("eval: 100q")


@pytest.mark.parametrize("forced, expect_cr, expect_output", [("bar", True, True), ("lines", False, True),
                                                               ("none", False, False)])
def test_env_var_forces_mode(monkeypatch, forced, expect_cr, expect_output):
    """MM_ADAPTER_PROGRESS overrides the terminal check (here on a non-terminal stream)."""
    monkeypatch.setenv(ENV_VAR, forced)
    stream = io.StringIO()
    run(stream, total=20)
    assert ("\r" in stream.getvalue()) is expect_cr and bool(stream.getvalue()) is expect_output


def test_env_var_typo_is_an_error(monkeypatch):
    """An unknown MM_ADAPTER_PROGRESS value is rejected rather than silently ignored."""
    monkeypatch.setenv(ENV_VAR, "bars")
    with pytest.raises(ValueError, match=ENV_VAR):
        progress(10, stream=io.StringIO())
