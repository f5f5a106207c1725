"""``xai-recipes`` command line: demo, explain, evaluate, audit, fit-gam, list, methods, describe, plugins, serve.

Exit codes: 0 success; 1 some images were skipped (each reported, the rest written);
2 a bad model, label, method or option stopped the run (one line, ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from . import XAIRecipesError, list_recipes, plugins, recipes  # the rest on use: `list` stays instant
from .images import image_files
from .options import add_task_arguments, parse_option, targets, task_options


def _demo(args: argparse.Namespace) -> int:
    from . import explain
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
    return 0


def _inputs(paths: list[str]) -> list[str]:
    """Files as given, folders expanded to their image files (recursively, sorted)."""
    out: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            out.extend(str(f) for f in image_files(p))
        else:
            out.append(p)
    return out


def _stem(source: str, taken: set[str]) -> str:
    stem, n = Path(source).stem, 1
    while stem in taken:
        n += 1
        stem = f"{Path(source).stem}-{n}"
    taken.add(stem)
    return stem


def _explain(args: argparse.Namespace) -> int:
    from . import explain

    if args.ray:
        try:
            from .ray import cli_explain
        except ImportError as exc:
            raise XAIRecipesError(str(exc)) from None
        return cli_explain(args)
    target = targets(args.target, args.box)
    files = _inputs(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = []

    def report(source: str, error: Exception) -> None:
        skipped.append({"image": source, "error": str(error)})
        tqdm.write(f"skipped {source}: {error}", file=sys.stderr)

    options = dict(parse_option(o) for o in args.option or [])
    if args.n_components is not None:
        options["n_components"] = args.n_components
    options.update(task_options(args))
    results = explain(args.model, files, method=args.method, target=target, top_k=args.top_k, device=args.device,
                      recipe=args.recipe, task=args.task, trust_remote_code=args.trust_remote_code,
                      batch_size=args.batch_size, on_error=report, **options)
    rows, taken = [], set()
    for exp in tqdm(results, total=len(files), unit="image", file=sys.stderr, disable=args.quiet or None):
        stem = _stem(exp.source, taken)
        overlay, *raw = exp.save(out / f"{stem}.png") + exp.save(out / f"{stem}.npz")
        _, label, score = exp.predictions[0]
        rows.append({"image": exp.source, "predicted": label, "score": round(score, 4), "explained": exp.labels,
                     "scores": [round(float(x), 4) for x in exp.scores], "task": exp.task,
                     "boxes": None if exp.boxes is None else [[round(v, 1) for v in b] for b in exp.boxes],
                     "regions": None if exp.masks is None else [int(m.sum()) for m in exp.masks],
                     "recipe": exp.recipe, "method": exp.method, "overlay": str(overlay), "maps": [str(p) for p in raw]})
    if args.format == "json":
        print(json.dumps({"results": rows, "skipped": skipped}, indent=1))
    else:
        width = max([len(r["image"]) for r in rows] + [5])
        print(f"{'image':{width}}  {'predicted':24} {'score':>6}  overlay")
        for r in rows:
            print(f"{r['image']:{width}}  {r['predicted'][:24]:24} {r['score']:6.3f}  {r['overlay']}")
            for label, score, box, area in zip(r["explained"], r["scores"], r["boxes"] or [None] * len(r["scores"]),
                                               r["regions"] or [None] * len(r["scores"])):
                if box is not None or area is not None:  # each detection's box, each segment's area
                    where = f"box ({', '.join(f'{v:g}' for v in box)})" if box is not None else f"region {area} px"
                    print(f"{'':{width}}    {label[:22]:22} {score:6.3f}  {where}")
        print(f"{len(rows)} explained, {len(skipped)} skipped -> {out}", file=sys.stderr)
    return 1 if skipped else 0


def _fit_gam(args: argparse.Namespace) -> int:
    from .gam_fit import fit_gam

    model = fit_gam(args.backbone, args.folder, held_out=args.held_out, C=args.C, batch_size=args.batch_size,
                    seed=args.seed, progress=not args.quiet, trust_remote_code=args.trust_remote_code)
    model.save_pretrained(args.out)
    print(model.fit_report)
    print(f"GAM saved to {args.out}; explain it with: xai-recipes explain {args.out} IMAGE --method patch-contributions")
    return 1 if model.fit_report.skipped else 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import METRICS, evaluate

    out = Path(args.out) if args.out else None
    taken: set[str] = set()

    def save(sample, exp) -> None:
        exp.save(out / f"{_stem(sample.source or 'image', taken)}-{exp.method}.png")

    if out:
        out.mkdir(parents=True, exist_ok=True)
    bar = (lambda items: tqdm(items, unit="image", file=sys.stderr, disable=args.quiet or None))
    result = evaluate(args.model, args.data, methods=args.method, metrics=args.metric or METRICS,
                      recipe=args.recipe, tolerance=args.tolerance,
                      steps=args.steps, trust_remote_code=args.trust_remote_code, progress=bar, sanity=args.sanity,
                      on_explanation=save if out else None, **task_options(args))
    if out:
        (out / "rows.csv").write_text(result.csv())
        (out / "evaluation.json").write_text(json.dumps(result.as_dict(), indent=1))
    print({"table": result.table, "csv": result.csv,
           "json": lambda: json.dumps(result.as_dict(), indent=1)}[args.format]())
    return 0


def _list(args: argparse.Namespace) -> int:
    table = recipes()
    for name in list_recipes(args.pattern):
        r = table[name]
        print(f"{name:14} {','.join(r.model_types):16} {r.default_method:17} [{r.plugin}] {r.description}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from . import methods_table

    if args.model:
        from .description import describe

        found = describe(args.model, recipe=args.recipe, trust_remote_code=args.trust_remote_code)
        if args.format == "json":
            print(json.dumps({"recipe": found.recipe, "default_method": found.default_method, "methods": found.methods},
                             indent=1))
            return 0
        print(f"{found.recipe} (default: {found.default_method})")
        for name, why in found.methods.items():
            print(f"  {name:20} {'ok' if why == 'ok' else 'no: ' + why}")
        return 0
    table = methods_table()
    if args.format == "json":
        print(json.dumps([{"name": m.name, "plugin": m.plugin, "needs": list(m.needs), "options": dict(m.options),
                           "class_specific": m.class_specific, "description": m.description,
                           "reference": m.reference} for m in table.values()], indent=1))
        return 0
    for m in table.values():
        print(f"{m.name:20} [{m.plugin}] {m.description}")
    return 0


def _size(text: str) -> tuple[int, int]:
    """``"128"`` or ``"96x128"`` → (height, width)."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"want N or HxW in pixels, got {text!r}")
    return int(parts[0]), int(parts[-1])


def _describe(args: argparse.Namespace) -> int:
    from .description import describe

    found = describe(args.model, recipe=args.recipe, trust_remote_code=args.trust_remote_code, input_size=args.input_size)
    print(json.dumps(found.as_dict(), indent=1) if args.format == "json" else found)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    found = plugins()
    if args.format == "json":
        print(json.dumps([vars(p) for p in found], indent=1))
    for p in found if args.format != "json" else []:
        state = f"ERROR {p.error}" if p.error else ", ".join(p.recipes + p.methods)
        print(f"{p.name:14} {p.distribution or '-'} {p.version or ''}: {state}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from . import web
    except ImportError as exc:
        raise XAIRecipesError(f"the web page needs gradio ({exc}); install it with: pip install \"xai-recipes[web]\"") from None
    web.serve(args.model, host=args.host, port=args.port, max_file_size=args.max_file_size, demo=not args.no_demo,
              concurrency=args.concurrency, max_queue=args.max_queue)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from .audit import audit

    options = dict(parse_option(o) for o in args.option or [])
    bar = (lambda items: tqdm(items, unit="image", file=sys.stderr, disable=args.quiet or None))
    result = audit(args.model, args.data, method=args.method, device=args.device, recipe=args.recipe,
                   trust_remote_code=args.trust_remote_code, classes=args.classes, batch_size=args.batch_size,
                   resolution=args.resolution, max_clusters=args.max_clusters, n_concepts=args.n_concepts,
                   ray=(args.ray if args.ray != "local" else True) if args.ray else False, progress=bar,
                   out=args.out, **options)
    for s in result.skipped:
        print(f"skipped {s['image']}: {s['error']}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({k: v for k, v in result.as_dict().items() if k != "classes"} | {"report": str(args.out)},
                         indent=1))
    else:
        print(f"{'class':20} {'images':>6} {'strategies':>10}  flags")
        for c in result.classes:
            flags = "; ".join(f"cluster {f['cluster']} {f['rule']}" for f in c.flags) or "-"
            print(f"{c.label[:20]:20} {len(c.images):6} {len(c.clusters):10}  {flags}")
        print(f"flagged: {', '.join(result.flagged) or 'none'}; report -> {Path(args.out) / 'index.html'}",
              file=sys.stderr)
    return 1 if result.skipped else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="xai-recipes", description="Explain Hugging Face image classifiers.",
                                  epilog="exit codes: 0 ok, 1 some images skipped, 2 error")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="explain real photos with a real ImageNet model, offline")
    demo.add_argument("--out", default=".", help="folder for the overlay PNGs")
    demo.add_argument("--model-dir", help="where to build the demo model (default: ~/.cache/xai-recipes)")
    demo.set_defaults(run=_demo)

    ex = sub.add_parser("explain", help="explain images or folders of images",
                        description="Write an overlay (IMAGE.png) and the raw maps (IMAGE.npz + IMAGE.json, "
                                    "readable with xai_recipes.load) per image into --out.")
    ex.add_argument("model", metavar="MODEL", help="hub id or local folder")
    ex.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files and/or folders")
    ex.add_argument("--method", help="gradcam, hirescam, ..., attention, rollout, gradient-rollout, legrad, dff, "
                    "patch-contributions: see xai-recipes methods MODEL (default: the recipe's default method)")
    ex.add_argument("--option", action="append", metavar="NAME=VALUE",
                    help="a method option, e.g. head_fusion=max, discard_ratio=0.9, layers=4 (repeatable)")
    ex.add_argument("--target", nargs="+", metavar="LABEL",
                    help="label names or indices (default: top-k predictions); for CLIP / SigLIP free-text prompts, "
                         "e.g. --target 'a red car' 'a dog'")
    add_task_arguments(ex, "the targets")
    ex.add_argument("--task", help="image-classification, zero-shot-image-classification or image-feature-extraction "
                                   "(default: found from the model and target)")
    ex.add_argument("--box", nargs="+", metavar="X0,Y0,X1,Y1",
                    help="detectors: explain the detection overlapping each box most (image pixels)")
    ex.add_argument("--top-k", type=int, default=None,
                    help="explain the k top predictions (default: 1 class, up to 10 detections, 3 segments); DFF: "
                         "classes per concept")
    ex.add_argument("--n-components", type=int, help="DFF: number of concepts (default 5)")
    ex.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    ex.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    ex.add_argument("--device", help="e.g. cpu, cuda, cuda:1")
    ex.add_argument("--format", choices=["table", "json"], default="table", help="summary format on stdout")
    ex.add_argument("--recipe", help="recipe name, overriding dispatch by model type")
    ex.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    ex.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="explain on Ray Data actors (pip install \"xai-recipes[ray]\"): a local Ray, or the cluster at "
                         "ADDRESS (ray://host:10001, or RAY_ADDRESS); writes IMAGE-FILE-NAME.png/.npz/.json, "
                         "skipping images already written")
    ex.set_defaults(run=_explain)

    fit = sub.add_parser("fit-gam", help="fit a patch-embedding GAM (DINO-GAM) head on a frozen backbone",
                         description="Embed FOLDER/<class>/<image> with the frozen BACKBONE, fit a logistic-regression "
                                     "head, report held-out accuracy and save the GAM (safetensors + JSON) to --out.")
    fit.add_argument("backbone", metavar="BACKBONE", help="hub id or folder of a backbone with patch tokens (DINO, ViT, ...)")
    fit.add_argument("folder", metavar="FOLDER", help="images laid out as FOLDER/<class>/<image>")
    fit.add_argument("--out", required=True, help="folder for the fitted GAM")
    fit.add_argument("--held-out", type=float, default=0.2, help="share of each class kept for the accuracy report")
    fit.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength (default 1)")
    fit.add_argument("--batch-size", type=int, default=16)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--trust-remote-code", action="store_true")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit_gam)

    ev = sub.add_parser("evaluate", help="score explanations against annotated objects (pointing game, deletion, ...)",
                        description="Explain every image of DATA (a folder with a COCO-style annotations.json: boxes "
                                    "and/or mask PNGs, one class per image) for its class with each method, and "
                                    "print the metrics' means per method; --out writes rows.csv, evaluation.json "
                                    "and the overlays.")
    ev.add_argument("model", metavar="MODEL", help="hub id or local folder")
    ev.add_argument("data", metavar="DATA", help="folder with annotations.json")
    ev.add_argument("--method", nargs="+", help="methods (default: the recipe's default and gradcam)")
    ev.add_argument("--metric", nargs="+", choices=["pointing", "energy", "deletion", "insertion", "road"],
                    help="metrics (default: all)")
    ev.add_argument("--tolerance", type=int, default=15, help="pointing game tolerance in pixels (default 15)")
    ev.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    ev.add_argument("--sanity", action="store_true", help="also run the parameter-randomisation sanity check per method")
    ev.add_argument("--format", choices=["table", "json", "csv"], default="table")
    ev.add_argument("--out", help="folder for rows.csv, evaluation.json and overlays")
    add_task_arguments(ev, "the data's category names")
    ev.add_argument("--recipe", help="recipe name, overriding dispatch by model type")
    ev.add_argument("--trust-remote-code", action="store_true")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(run=_evaluate)

    au = sub.add_parser("audit", help="audit a model over a data set: strategies (SpRAy), shortcut flags, concepts",
                        description="Explain every image of DATA for its class, cluster each class's heatmaps "
                                    "(SpRAy), flag clusters whose evidence sits at a fixed position or off the "
                                    "annotated object, factorise the class's features into named concepts, and write "
                                    "a static HTML report with audit.json into --out.")
    au.add_argument("model", metavar="MODEL", help="hub id or local folder")
    au.add_argument("data", metavar="DATA", help="folder of class folders (DATA/<class>/<image>) or with annotations.json")
    au.add_argument("--out", default="report", help="report folder (default ./report)")
    au.add_argument("--method", help="explanation method (default: the recipe's default)")
    au.add_argument("--option", action="append", metavar="NAME=VALUE", help="a method option (repeatable)")
    au.add_argument("--classes", nargs="+", metavar="LABEL", help="audit only these classes")
    au.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    au.add_argument("--resolution", type=int, default=16, help="side of the grid maps are clustered at (default 16)")
    au.add_argument("--max-clusters", type=int, default=8, help="most strategies per class (default 8)")
    au.add_argument("--n-concepts", type=int, default=4, help="concepts per class (default 4)")
    au.add_argument("--device", help="e.g. cpu, cuda")
    au.add_argument("--recipe", help="recipe name, overriding dispatch by model type")
    au.add_argument("--trust-remote-code", action="store_true")
    au.add_argument("--format", choices=["table", "json"], default="table")
    au.add_argument("--quiet", action="store_true", help="no progress bar")
    au.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="explain on Ray Data actors")
    au.set_defaults(run=_audit)

    ls = sub.add_parser("list", help="registered recipes (shell-style filter, e.g. 'vi*')")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(run=_list)
    me = sub.add_parser("methods", help="registered methods; with MODEL, which apply to it and why not")
    me.add_argument("model", metavar="MODEL", nargs="?", help="hub id or local folder")
    me.add_argument("--recipe", help="recipe name, overriding dispatch by model type")
    me.add_argument("--format", choices=["text", "json"], default="text")
    me.add_argument("--trust-remote-code", action="store_true")
    me.set_defaults(run=_methods)
    de = sub.add_parser("describe", help="which recipe, layers and reshape MODEL would be explained with")
    de.add_argument("model", metavar="MODEL", help="hub id or local folder")
    de.add_argument("--recipe", help="recipe name, overriding dispatch by model type")
    de.add_argument("--format", choices=["text", "json"], default="text")
    de.add_argument("--trust-remote-code", action="store_true")
    de.add_argument("--input-size", type=_size, metavar="N|HxW",
                    help="model input size for the stage of hierarchical models (default: the config's image_size)")
    de.set_defaults(run=_describe)
    pl = sub.add_parser("plugins", help="installed plugins, their versions and recipes")
    pl.add_argument("--format", choices=["text", "json"], default="text")
    pl.set_defaults(run=_plugins)
    se = sub.add_parser("serve", help="a web page to explain images (gradio; pip install \"xai-recipes[web]\")",
                        description="Serve a page to upload an image, choose model, method and targets, and see the "
                                    "labelled overlays, predictions, DFF concepts and attention heads.")
    se.add_argument("model", metavar="MODEL", nargs="*", help="local folders or hub ids to offer (the bundled "
                    "EfficientNet-Lite0 demo model is offered too)")
    se.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    se.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    se.add_argument("--max-file-size", default="20mb", help="largest upload accepted (default 20mb)")
    se.add_argument("--no-demo", action="store_true", help="do not offer the bundled demo model")
    se.add_argument("--concurrency", type=int, default=2, help="requests explained at once; the rest queue (default 2)")
    se.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait; more are refused (default 64)")
    se.set_defaults(run=_serve)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except XAIRecipesError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
