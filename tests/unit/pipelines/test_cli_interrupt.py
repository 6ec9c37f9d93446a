"""Ctrl-C during a sweep: the CLI prints how to resume and exits 130 without joining the study threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import argparse, sys, threading, time
from pipelines import cli
from pipelines.errors import SweepInterrupted

def build_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="store_true")
    def handler(args):
        raise SweepInterrupted("smoke", "smoke-20260101-000000")
    parser.set_defaults(handler=handler)
    return parser

cli.build_parser = build_parser
threading.Thread(target=time.sleep, args=(600,)).start()  # a study thread that will not end
sys.exit(cli.main([]))
"""


def test_sweep_interrupt_exits_130_with_the_resume_command() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted: continue with  memseg sweep --config smoke --resume --sweep-id smoke-20260101-000000" in (
        proc.stdout
    )
