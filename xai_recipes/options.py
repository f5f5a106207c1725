"""Command-line options for methods and tasks (``--option NAME=VALUE``, ``--labels``, ``--template``), shared by
the CLI and Ray."""

from __future__ import annotations

import argparse
import json

from .errors import XAIRecipesError


def parse_option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` → (name, value), the value read as JSON when it is JSON (numbers, true, null)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise XAIRecipesError(f"--option wants NAME=VALUE, got {text!r}")
    try:
        return name.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.replace("-", "_"), value


def task_options(args: argparse.Namespace) -> dict[str, object]:
    """Zero-shot options given on the command line: ``--labels``, ``--template`` (``--no-template``: as given)."""
    options: dict[str, object] = {}
    if getattr(args, "labels", None):
        options["labels"] = args.labels
    if getattr(args, "no_template", False):
        options["template"] = None
    elif getattr(args, "template", None) is not None:
        options["template"] = args.template
    return options


def add_task_arguments(parser: argparse.ArgumentParser, default_labels: str) -> None:
    """``--labels``, ``--template`` and ``--no-template`` (read back by :func:`task_options`)."""
    parser.add_argument("--labels", nargs="+", metavar="PROMPT",
                        help=f"zero-shot models: the candidate prompts the probabilities are taken over (default: "
                             f"{default_labels})")
    parser.add_argument("--template", help="zero-shot: prompt template (default 'This is a photo of {}.', as the pipeline)")
    parser.add_argument("--no-template", action="store_true", help="zero-shot: use the prompts as given")
