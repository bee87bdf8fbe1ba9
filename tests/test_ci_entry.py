"""CI runs what a newcomer runs: .ci/run's command is the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> dict[str, str]:
    """The "Two commands" block: comment -> command."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", text, re.S)
    assert block is not None, "README has no 'Two commands' sh block"
    out = {}
    for line in block.group(1).splitlines():
        cmd, _, comment = line.partition("#")
        if cmd.strip():
            out[comment.strip()] = cmd.strip()
    return out


def _readme_test_line() -> str:
    """The README's test command line, verbatim (with its comment)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", text, re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if "test suite" in ln]
    assert len(lines) == 1, block.group(1)
    return lines[0]


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    tests = [c for why, c in _readme_commands().items() if "test suite" in why]
    assert len(tests) == 1, _readme_commands()
    lines = (REPO / ".ci/run").read_text().splitlines()
    commands = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    # shell options and the move to the repository root (POSIX sh: CI may run
    # the file with sh), then the README's test line exactly as printed there
    assert [c.partition("#")[0].strip() for c in commands[:-1]] == [
        "set -eu", 'cd "$(dirname "$0")/.."']
    assert commands[-1] == _readme_test_line()
    assert commands[-1].partition("#")[0].strip() == tests[0] == "bash scripts/test.sh"


def test_readme_commands_are_the_scripts_that_exist() -> None:
    for cmd in _readme_commands().values():
        script = cmd.split()[1]
        assert (REPO / script).is_file(), cmd
