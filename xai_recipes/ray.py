"""Explain a whole data set on Ray Data: one model per actor, the batched engine inside each.

``explain_dataset(data, model)`` reads the images with ``ray.data.read_binary_files`` (or takes
any Ray Dataset), explains them with ``map_batches`` over a pool of actors (each loads the model
once, then calls :func:`xai_recipes.explain` on its batches: one forward/backward per batch) and
gives a Dataset of rows. An image that cannot be decoded becomes a row with ``error`` set; the job
goes on. With ``output=`` each actor writes the project's ``.npz`` + ``.json`` per image (read
back with :func:`xai_recipes.load`) and a rerun skips the images already written.

Ray is imported only here: ``pip install "xai-recipes[ray]"``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import ImageError, XAIRecipesError
from .images import image_files

if TYPE_CHECKING:
    import argparse

    import ray.data
    from torch import nn

try:
    import ray  # the real Ray: absolute import (this module is xai_recipes.ray)
    import ray.data
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"xai_recipes.ray needs Ray Data ({exc}); install it with: pip install \"xai-recipes[ray]\"") from None

_PARTIAL = ".xai-recipes-partial"  # files being written, renamed into place when complete


def output_base(source: str, output: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Where the files of ``source`` go under ``output``, without the ``.npz``/``.json`` suffix.

    Relative to ``root`` (the folder that was explained) when ``source`` lies in it, else the
    whole path mirrored under ``output`` (``s3://bucket/a.jpg`` → ``output/s3/bucket/a.jpg``),
    so the name of an image never depends on which other images are explained with it.
    """
    path = PurePath(source.replace("://", "/", 1)) if "://" in source else PurePath(source)
    if root is not None:
        try:
            path = path.relative_to(PurePath(root))
        except ValueError:
            pass
    parts = [p for p in path.parts if p not in ("", ".", "..") and p != path.anchor]
    if not parts:
        raise XAIRecipesError(f"cannot name an output file for source {source!r}; give each image a file name")
    return Path(output, *parts)


def _suffixed(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def is_written(source: str, output: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Whether ``source``'s explanation is complete under ``output`` (its ``.json``, written last, exists)."""
    return _suffixed(output_base(source, output, root), ".json").is_file()


def image_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[str], str | None]:
    """Absolute image paths of a folder (recursively, as :func:`explain` lists it) or of a list of
    files and folders, and the root their output names are relative to (the folder, or None)."""
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).is_dir():
            return image_paths([data])
        files = image_files(data)
        if not files:
            raise ImageError(f"folder {data} holds no image files; pass a folder of images or a list")
        return [os.path.abspath(f) for f in files], os.path.abspath(data)
    paths: list[str] = []
    for item in data:
        if Path(item).is_dir():
            paths.extend(os.path.abspath(f) for f in image_files(item))
        elif "://" in str(item):
            paths.append(str(item))
        else:
            paths.append(os.path.abspath(item))
    missing = [p for p in paths if "://" not in p and not os.path.isfile(p)]
    if missing:
        raise ImageError(f"{len(missing)} image file(s) do not exist, e.g. {missing[0]!r}; remove them from the list")
    if not paths:
        raise ImageError("no images to explain; pass a folder of images, a list of image files or a Ray Dataset")
    return paths, None


def _arrow_table(rows: list[dict[str, Any]], with_maps: bool, with_output: bool):
    import pyarrow as pa
    from ray.data.extensions import ArrowVariableShapedTensorArray

    def column(name: str, kind) -> Any:
        return pa.array([r[name] for r in rows], kind)

    table = {
        "source": column("source", pa.string()),
        "indices": column("indices", pa.list_(pa.int64())),
        "labels": column("labels", pa.list_(pa.string())),
        "scores": column("scores", pa.list_(pa.float64())),
        "predictions": column("predictions", pa.string()),
        "recipe": column("recipe", pa.string()),
        "method": column("method", pa.string()),
        "boxes": column("boxes", pa.string()),  # JSON: per map its detection's box, or null
    }
    if with_maps:
        table["heatmaps"] = ArrowVariableShapedTensorArray.from_numpy([r["heatmaps"] for r in rows])
        table["coverage"] = ArrowVariableShapedTensorArray.from_numpy([r["coverage"] for r in rows])
        table["masks"] = ArrowVariableShapedTensorArray.from_numpy([r["masks"] for r in rows])
    if with_output:
        table["output"] = column("output", pa.string())
    table["error"] = column("error", pa.string())
    return pa.table(table)


class _Explainer:
    """A Ray Data actor: loads the model once, explains each batch with the batched engine."""

    def __init__(self, model: Any, loading: dict[str, Any], explain_options: dict[str, Any],
                 output: str | None, root: str | None, overlays: bool) -> None:
        from .loading import load

        self.model, processor = load(model, loading["processor"], loading["device"], loading["trust_remote_code"])
        self.options = {"processor": processor, **explain_options}
        self.output, self.root, self.overlays = output, root, overlays
        self.partial = Path(output, _PARTIAL, uuid.uuid4().hex) if output else None

    def __call__(self, batch: dict[str, np.ndarray]):
        from .engine import explain

        if "bytes" not in batch and "image" not in batch:
            raise XAIRecipesError(f"a Ray Dataset to explain needs a 'bytes' column (ray.data.read_binary_files) or an "
                                  f"'image' column (ray.data.read_images); this one has {sorted(batch)}")
        n = len(next(iter(batch.values())))
        if "path" in batch:
            sources = [str(s) for s in batch["path"]]
        elif self.output:
            raise XAIRecipesError("a Ray Dataset explained with output= needs a 'path' column to name the files; "
                                  "read it with include_paths=True")
        else:
            sources = [f"<image {i}>" for i in range(n)]
        keep = [i for i in range(n) if not (self.output and is_written(sources[i], self.output, self.root))]
        rows: dict[int, dict[str, Any]] = {}
        per_row = "target" in batch  # a target per row (e.g. each image's labelled class): one call per target
        groups: dict[Any, list[int]] = {}
        for i in keep:
            groups.setdefault(int(batch["target"][i]) if per_row else None, []).append(i)
        with tempfile.TemporaryDirectory(prefix="xai-recipes-ray-") as scratch:
            for target, members in groups.items():
                images, keys = [], {}
                for i in members:
                    if "bytes" in batch:  # decoded by explain() itself, from a file: errors and EXIF as for any path
                        name = PurePath(sources[i].split("://")[-1]).name or "image"
                        path = Path(scratch, str(i), name)
                        path.parent.mkdir()
                        path.write_bytes(bytes(batch["bytes"][i]))
                        image, key = path, str(path)
                    else:
                        image = batch["image"][i]
                        key = f"<image {len(images)}>"
                    keys[key] = i
                    images.append(image)

                def failed(key: str, error: Exception, keys: dict[str, int] = keys) -> None:
                    i = keys[key]
                    message = str(error).replace(key, sources[i]) if key.startswith(scratch) else str(error)
                    rows[i] = self._failure(sources[i], f"{type(error).__name__}: {message}")

                options = {**self.options, "target": target} if per_row else self.options
                for exp in explain(self.model, images, on_error=failed, batch_size=len(images), **options):
                    i = keys[exp.source]
                    exp.source = sources[i]
                    rows[i] = self._row(exp)
        return _arrow_table([rows[i] for i in keep], with_maps=not self.output, with_output=bool(self.output))

    def _failure(self, source: str, error: str) -> dict[str, Any]:
        return {"source": source, "indices": [], "labels": [], "scores": [], "predictions": "[]", "recipe": None,
                "method": None, "heatmaps": np.zeros((0, 0, 0), np.float32), "coverage": np.zeros((0, 0), bool),
                "boxes": "null", "masks": np.zeros((0, 0, 0), bool), "output": None, "error": error}

    def _row(self, exp: Any) -> dict[str, Any]:
        row = {"source": exp.source, "indices": [int(i) for i in exp.indices], "labels": list(exp.labels),
               "scores": [float(s) for s in exp.scores], "predictions": json.dumps(exp.predictions),
               "recipe": exp.recipe, "method": exp.method, "heatmaps": np.asarray(exp.heatmaps, np.float32),
               "coverage": np.asarray(exp.coverage, bool), "boxes": json.dumps(exp.boxes),
               "masks": np.zeros((0, 0, 0), bool) if exp.masks is None else np.asarray(exp.masks, bool),
               "output": None, "error": None}
        if self.output:
            row["output"] = str(self._write(exp))
        return row

    def _write(self, exp: Any) -> Path:
        """``.npz`` (+ overlay ``.png``) then ``.json``, each renamed into place whole: a run killed
        mid-write leaves no ``.json``, so the image is explained again on the next run."""
        base = output_base(exp.source, self.output, self.root)
        base.parent.mkdir(parents=True, exist_ok=True)
        assert self.partial is not None
        self.partial.mkdir(parents=True, exist_ok=True)
        staged = self.partial / base.name  # same file names as the final ones: the .json names its .npz
        written = exp.save(_suffixed(staged, ".npz"))
        if self.overlays:
            written = exp.save(_suffixed(staged, ".png")) + written
        for path in sorted(written, key=lambda p: p.suffix == ".json"):  # the .json last
            os.replace(path, base.parent / path.name)
        return _suffixed(base, ".json")


def explain_dataset(
    data: "ray.data.Dataset | str | os.PathLike | Sequence[str | os.PathLike]",
    model: "str | os.PathLike | nn.Module",
    method: str | None = None,
    target: Any = None,
    top_k: int | None = None,
    *,
    batch_size: int = 8,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus: float = 0,
    num_cpus: float = 1,
    output: str | os.PathLike | None = None,
    overlays: bool = False,
    processor: Any = None,
    recipe: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> "ray.data.Dataset":
    """Explain every image of ``data`` on Ray Data, one model per actor.

    Args:
        data: a folder (searched recursively), a list of image files/folders (local paths or any
            ``pyarrow`` filesystem URI such as ``s3://...``), or a Ray Dataset with a ``bytes``
            column (``ray.data.read_binary_files``) or an ``image`` column (``ray.data.read_images``),
            plus ``path`` (``include_paths=True``) to name the rows, and optionally ``target``
            (a class index per row, overriding ``target``: each image explained for its own class). Files are decoded by the
            project's own reader, exactly as :func:`xai_recipes.explain` decodes a path.
        model: hub id or folder (each actor loads it once), or a loaded model (shipped to each
            actor through the object store).
        method, target, top_k, processor, recipe, trust_remote_code, **options: as for
            :func:`xai_recipes.explain`.
        batch_size: images per ``map_batches`` batch, explained in one forward/backward pass.
        concurrency: number of actors (model copies); ``(min, max)`` for an autoscaling pool;
            ``None``: from 1 up to as many as the cluster's free CPUs (GPUs) allow.
        num_gpus, num_cpus: resources per actor; ``num_gpus > 0`` puts the model on ``cuda``
            unless ``device`` says otherwise.
        output: a folder: each actor writes ``<image file name>.npz`` + ``.json`` per image
            (:meth:`Explanation.save`; ``.png`` overlays too with ``overlays=True``), mirroring
            the input folder; images whose ``.json`` already exists are skipped, so a killed run
            resumes where it stopped. The job then runs at once and the returned (materialised)
            rows carry ``output`` (the ``.json`` path) instead of the maps.

    Returns:
        A Dataset with one row per image: ``source``, ``indices``, ``labels``, ``scores``,
        ``predictions`` (JSON of the top-5 ``[index, label, probability]``), ``recipe``,
        ``method``, ``boxes`` (JSON: detections' boxes, else ``null``), ``heatmaps`` (``T×H×W``
        float32 at the image's size), ``coverage`` (``H×W`` bool), ``masks`` (segments: ``T×H×W``
        bool, else ``0×0×0``), ``error`` (``None``, or the typed error of an image that could not be explained,
        whose lists are then empty and maps ``0×0``). Lazy without ``output``: consume it with
        ``take_all()``, ``iter_rows()`` or ``write_parquet(folder)``.
    """
    from . import registry

    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise XAIRecipesError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise XAIRecipesError(f"batch_size must be a positive integer, got {batch_size!r}")
    if method is not None:
        chosen = registry.get_method(method)  # an unknown method or option fails here, before any actor starts
        task_names = {name for task in registry.tasks_table().values() for name in task.options} | {"task"}
        unknown = sorted(set(options) - set(chosen.options) - task_names)
        if unknown:
            raise XAIRecipesError(f"method {chosen.name!r} takes no option {', '.join(map(repr, unknown))}; its "
                                  f"options: {', '.join(chosen.options) or 'none'}")
    if device is None and num_gpus:
        device = "cuda"
    root = None
    if isinstance(data, ray.data.Dataset):
        dataset = data
    else:
        paths, root = image_paths(data)
        if output is not None:
            paths = [p for p in paths if not is_written(p, output, root)]  # resumed: not even read again
        if not paths:
            return ray.data.from_arrow(_arrow_table([], with_maps=output is None, with_output=output is not None))
        # reading is I/O: it reserves no CPU, so actors may take every CPU without starving the reads
        dataset = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0)
    out = None if output is None else os.path.abspath(output)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    loading = {"processor": processor, "device": device, "trust_remote_code": trust_remote_code}
    explain_options = {"method": method, "target": target, "top_k": top_k, "recipe": recipe, **options}
    if isinstance(concurrency, int):
        compute = ray.data.ActorPoolStrategy(size=concurrency)
    elif concurrency is None:
        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=None)
    else:
        compute = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    result = dataset.map_batches(
        _Explainer, batch_size=batch_size, batch_format="numpy", compute=compute, num_gpus=num_gpus,
        num_cpus=num_cpus, fn_constructor_args=(model, loading, explain_options, out, root, overlays),
    )
    if hasattr(result.context, "raise_original_map_exception"):  # Ray >= 2.4x: a typed error, not UserCodeException
        result.context.raise_original_map_exception = True
    if out is None:
        return result
    try:
        result = result.materialize()
    except ray.exceptions.RayTaskError as exc:
        raise _typed(exc) from None
    for leftover in [*Path(out, _PARTIAL).glob("*"), Path(out, _PARTIAL)]:  # emptied actor folders
        try:
            leftover.rmdir()
        except OSError:  # not empty: a killed run's half-written files, or another run at work
            pass
    return result


def _typed(exc: Exception) -> Exception:
    """The project's typed error behind a Ray task error (a bad target, method or model), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, XAIRecipesError) else exc


def cli_explain(args: "argparse.Namespace") -> int:
    """``xai-recipes explain MODEL IMAGES... --ray [ADDRESS]``: the files of the plain command
    (overlay ``.png``, ``.npz`` + ``.json`` per image, named after the image file) written by Ray
    actors, resumable; Ray's progress bars on stderr. Exit code 1 when some images failed."""
    from .options import parse_option, targets, task_options

    target = targets(args.target, getattr(args, "box", None))
    options = {**dict(parse_option(o) for o in args.option or []), **task_options(args)}
    if args.task:
        options["task"] = args.task
    if args.n_components is not None:
        options["n_components"] = args.n_components
    data = args.images[0] if len(args.images) == 1 and Path(args.images[0]).is_dir() else args.images
    paths, root = image_paths(data)
    done = sum(is_written(p, args.out, root) for p in paths)
    if not ray.is_initialized():
        ray.init(address=None if args.ray == "local" else args.ray, include_dashboard=False,
                 log_to_driver=not args.quiet)
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    gpus = 1 if (args.device or "").startswith("cuda") else 0
    rows = explain_dataset(data, args.model, method=args.method, target=target, top_k=args.top_k,
                           batch_size=args.batch_size, num_gpus=gpus, output=args.out, overlays=True,
                           device=args.device, recipe=args.recipe, trust_remote_code=args.trust_remote_code,
                           **options).take_all()
    ok = [r for r in rows if r["error"] is None]
    failed = [{"image": r["source"], "error": r["error"]} for r in rows if r["error"] is not None]
    for f in failed:
        print(f"skipped {f['image']}: {f['error']}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"results": [{"image": r["source"], "explained": list(r["labels"]), "recipe": r["recipe"],
                                       "method": r["method"], "predictions": json.loads(r["predictions"]),
                                       "maps": r["output"]} for r in ok],
                          "skipped": failed, "already_written": done}, indent=1))
    else:
        width = max([len(r["source"]) for r in ok] + [5])
        print(f"{'image':{width}}  {'predicted':24} {'score':>6}  maps")
        for r in ok:
            _, label, score = json.loads(r["predictions"])[0]
            print(f"{r['source']:{width}}  {label[:24]:24} {score:6.3f}  {r['output']}")
        print(f"{len(ok)} explained, {done} already written, {len(failed)} skipped -> {args.out}", file=sys.stderr)
    return 1 if failed else 0
