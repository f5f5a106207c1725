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


def box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → a box (the task checks that it fits the image)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise XAIRecipesError(f"a box is 4 comma-separated pixel coordinates x0,y0,x1,y1, got {text!r}; e.g. 10,20,110,140")
    return values  # type: ignore[return-value]


def region(text: str) -> object:
    """``--region``: a box ``x0,y0,x1,y1`` or a mask image file (white = inside), as ``region=`` takes it."""
    if "," in text:
        return box(text)
    from .images import load_image

    return load_image(text).convert("L")


def targets(texts: list[str] | None, boxes: list[str] | None = None) -> list[object] | None:
    """``--target`` values (digits → indices) and ``--box`` values (detections overlapping them), in that order."""
    out: list[object] = [int(t) if t.isdigit() else t for t in texts or []] + [box(b) for b in boxes or []]
    return out or None


def task_options(args: argparse.Namespace) -> dict[str, object]:
    """Task options given on the command line: ``--labels``, ``--template`` (``--no-template``: as given) for
    zero-shot models, ``--threshold`` for detectors, ``--region`` for segmenters."""
    options: dict[str, object] = {}
    if getattr(args, "threshold", None) is not None:
        options["threshold"] = args.threshold
    if getattr(args, "region", None):
        options["region"] = region(args.region)
    if getattr(args, "labels", None):
        options["labels"] = args.labels
    if getattr(args, "no_template", False):
        options["template"] = None
    elif getattr(args, "template", None) is not None:
        options["template"] = args.template
    return options


def add_task_arguments(parser: argparse.ArgumentParser, default_labels: str) -> None:
    """``--labels``, ``--template``, ``--no-template``, ``--threshold`` and ``--region`` (read back by
    :func:`task_options`)."""
    parser.add_argument("--threshold", type=float,
                        help="detectors: the score above which a detection counts (default 0.5, as the pipeline)")
    parser.add_argument("--region", metavar="BOX|MASK",
                        help="segmenters: explain the classes' scores over this region: x0,y0,x1,y1 or a mask image")
    parser.add_argument("--labels", nargs="+", metavar="PROMPT",
                        help=f"zero-shot models: the candidate prompts the probabilities are taken over (default: "
                             f"{default_labels})")
    parser.add_argument("--template", help="zero-shot: prompt template (default 'This is a photo of {}.', as the pipeline)")
    parser.add_argument("--no-template", action="store_true", help="zero-shot: use the prompts as given")
