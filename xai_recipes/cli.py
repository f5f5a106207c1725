"""``xai-recipes`` command line: demo, explain, list, methods, plugins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import METHODS, XAIRecipesError, explain, list_recipes, plugins, recipes


def _demo(args: argparse.Namespace) -> None:
    from .demo import build_demo_model, default_folder, photos

    folder = build_demo_model(args.model_dir or default_folder())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in photos().items():
        exp = explain(folder, image, top_k=2)
        path = out / f"demo-{name}-{exp.method}.png"
        exp.save(path)
        top = ", ".join(f"{label} ({score:.2f})" for _, label, score in exp.predictions[:3])
        print(f"{name}: {top}\n  explained {exp.labels} with {exp.recipe}/{exp.method} at {exp.target_layers} -> {path}")


def _explain(args: argparse.Namespace) -> None:
    target = [int(t) if t.isdigit() else t for t in args.target] if args.target else None
    exp = explain(args.model, args.image, method=args.method, target=target, top_k=args.top_k,
                  device=args.device, recipe=args.recipe, trust_remote_code=args.trust_remote_code)
    exp.save(args.out)
    for i, label, score in zip(exp.indices, exp.labels, exp.scores):
        print(f"{i}\t{label}\t{score:.4f}")
    print(f"recipe {exp.recipe}, layers {exp.target_layers} -> {args.out}")


def _list(args: argparse.Namespace) -> None:
    table = recipes()
    for name in list_recipes(args.pattern):
        r = table[name]
        print(f"{name:14} {','.join(r.model_types):16} [{r.plugin}] {r.description}")


def _plugins(args: argparse.Namespace) -> None:
    for p in plugins():
        state = f"ERROR {p.error}" if p.error else ", ".join(p.recipes)
        print(f"{p.name:14} {p.distribution or '-'} {p.version or ''}: {state}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="xai-recipes", description="Explain Hugging Face image classifiers.")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain real photos with a real ImageNet model, offline")
    demo.add_argument("--out", default=".", help="folder for the overlay PNGs")
    demo.add_argument("--model-dir", help="where to build the demo model (default: ~/.cache/xai-recipes)")
    demo.set_defaults(run=_demo)
    ex = sub.add_parser("explain", help="explain one image")
    ex.add_argument("model", help="hub id or local folder")
    ex.add_argument("image")
    ex.add_argument("--method", default="gradcam", choices=sorted(METHODS), type=str.lower)
    ex.add_argument("--target", nargs="*", help="label names or indices (default: top-k predictions)")
    ex.add_argument("--top-k", type=int, default=1)
    ex.add_argument("--out", default="explanation.png")
    ex.add_argument("--device")
    ex.add_argument("--recipe")
    ex.add_argument("--trust-remote-code", action="store_true")
    ex.set_defaults(run=_explain)
    ls = sub.add_parser("list", help="registered recipes (shell-style filter, e.g. 'vi*')")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(run=_list)
    sub.add_parser("methods", help="available methods").set_defaults(run=lambda a: print("\n".join(METHODS)))
    sub.add_parser("plugins", help="installed plugins and their recipes").set_defaults(run=_plugins)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except XAIRecipesError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
