"""A failed trial's error as stored: its latest failure's text, cut to its end, without terminal colours."""

from __future__ import annotations

from sweeps.driver import ERROR_TEXT_CHARS, error_tail, last_line


def test_only_the_latest_failure_is_kept() -> None:
    text = ("Failure # 1 (occurred at t1)\nTraceback\nValueError: first\n"
            "Failure # 2 (occurred at t2)\n\x1b[36mray::ImplicitFunc.train()\x1b[39m\nRuntimeError: second\n")
    assert error_tail(text) == "Failure # 2 (occurred at t2)\nray::ImplicitFunc.train()\nRuntimeError: second"
    assert last_line(error_tail(text)) == "RuntimeError: second"


def test_a_long_error_keeps_its_end() -> None:
    text = "frame\n" * 1000 + "RuntimeError: the cause"
    out = error_tail(text)
    assert out.startswith("...\n") and out.endswith("RuntimeError: the cause")
    assert len(out) == ERROR_TEXT_CHARS + len("...\n")
