"""The README is the contract: its two commands, and CI running the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_exactly_two_setup_commands_installing_torch_first():
    commands = setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")


def test_ci_runs_the_readme_test_command():
    _, test_command = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_main_command_and_cli_table_name_real_subcommands():
    parser = build_parser()
    main_command, _ = setup_commands()
    ttr_args = main_command.split("&& ttr ", 1)[1].split()
    parser.parse_args(ttr_args)  # exits (fails the test) on an unknown command or flag
    subcommands = set(parser._subparsers._group_actions[0].choices)
    listed = set(re.findall(r"^\| `ttr (\w[\w-]*)", (ROOT / "README.md").read_text(), re.M))
    assert listed == subcommands
