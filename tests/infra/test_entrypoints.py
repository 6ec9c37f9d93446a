"""Every `memseg` command the manifests and the runbook run parses with the real CLI parser.

Covers the RayJob's entrypoint, the data Job and every pasteable `memseg ...` line of
infra/README.md, so a renamed option fails here and not on the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex

import pytest

from pipelines.cli import build_parser
from tests.infra.manifests import INFRA, K8S, find, render


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _parse(argv: list[str]) -> argparse.Namespace:
    assert argv[0] == "memseg", argv
    parser = build_parser()
    assert argv[1] in _subcommands(parser), f"`memseg {argv[1]}` is not a registered subcommand"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{shlex.join(argv)} does not parse:\n{err.getvalue()}")


def test_rayjob_entrypoint_parses_with_the_real_cli() -> None:
    argv = shlex.split(find(render(K8S), "RayJob")["spec"]["entrypoint"])
    args = _parse(argv)
    assert argv[1:3] == ["pipeline", "run"]
    assert args.config == "paper"
    assert callable(args.handler)


def test_data_job_commands_parse_with_the_real_cli() -> None:
    script = find(render(K8S), "Job", "memseg-data-download")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    lines = [shlex.split(line) for line in script.splitlines() if line.strip()]
    assert [argv[:4] for argv in lines] == [
        ["memseg", "data", "download", "mvtec"],
        ["memseg", "data", "download", "dtd"],
        ["memseg", "data", "check", "--root"],
    ]
    for argv in lines:
        assert callable(_parse(argv).handler)


def _readme_memseg_commands() -> list[list[str]]:
    """Every `memseg ...` command of the runbook's shell blocks (also after `ray job submit ... --`)."""
    text = (INFRA / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
            simple: list[list[str]] = [[]]
            for tok in tokens:
                if tok in (";", "&&", "||", "|", "&"):
                    simple.append([])
                else:
                    simple[-1].append(tok)
            for argv in simple:
                if "--" in argv and argv[argv.index("--") + 1 : argv.index("--") + 2] == ["memseg"]:
                    argv = argv[argv.index("--") + 1 :]
                if argv[:1] == ["memseg"]:
                    commands.append(argv)
    return commands


def test_runbook_has_memseg_commands() -> None:
    assert len(_readme_memseg_commands()) >= 3


@pytest.mark.parametrize("argv", _readme_memseg_commands() or [["memseg", "--help"]], ids=shlex.join)
def test_runbook_memseg_commands_parse(argv: list[str]) -> None:
    assert callable(_parse(argv).handler)
    assert "--help" not in argv  # a runbook line must do something
