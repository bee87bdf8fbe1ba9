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


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    tests = [c for why, c in _readme_commands().items() if "test suite" in why]
    assert len(tests) == 1, _readme_commands()
    lines = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    # shell options and the move to the repository root, then the README's command
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', tests[0]]


def test_readme_commands_are_the_scripts_that_exist() -> None:
    for cmd in _readme_commands().values():
        script = cmd.split()[1]
        assert (REPO / script).is_file(), cmd
