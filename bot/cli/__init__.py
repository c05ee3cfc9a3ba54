"""The command line (`python -m bot`, `imagine-bot`): main.py dispatches; parser.py is the argparse tree;
jobs.py the job commands (imagine, the actions, rerun, history, show); output.py how jobs print;
signals.py Ctrl-C / SIGTERM during a render; tools.py tiny-models, download-models and workers."""

from __future__ import annotations

from bot.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bot.cli.jobs import _generate
from bot.cli.main import main
from bot.cli.output import _model_lines
from bot.cli.parser import build_parser
from bot.cli.signals import leave_if_signalled
from bot.cli.tools import workers_models_line

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "_generate",
    "_model_lines",
    "build_parser",
    "leave_if_signalled",
    "main",
    "workers_models_line",
]
