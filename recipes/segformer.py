"""SegFormer / MiT (``nvidia/mit-b0``): explained at the last stage's layernorm.

``segformer.stages[-1].layer_norm`` outputs the last stage's tokens ``B×(h·w)×C`` (no CLS),
which the classifier mean-pools. (The tutorial's ``segformer.encoder.layer_norm[-1]`` is
``segformer.stages[-1].layer_norm`` in transformers 5.) Each stage begins with an overlapping
patch embedding, a conv with padding ``patch_size // 2``, so the grid follows the config's
patch sizes and strides for the actual input size — not a fixed ``// 32``. Every stage's
layer_norm is a stage: where the last stage's grid is under 7×7 (128 px: 4×4), the CAM methods
read the stage before it.
"""

from xai_recipes import Attention, Recipe, conv_out, hookimpl, stage_grid, tokens_to_map


def grids(config, height: int, width: int) -> list[tuple[int, int]]:
    """Each stage's grid: its overlapping patch embedding applied to the previous one."""
    out = []
    for k, s in zip(config.patch_sizes, config.strides):
        height, width = conv_out(height, k, s, k // 2), conv_out(width, k, s, k // 2)
        out.append((height, width))
    return out


RECIPE = Recipe(
    name="segformer",
    model_types=("segformer",),
    target_layers=lambda m: [m.segformer.stages[-1].layer_norm],
    stages=lambda m: [stage.layer_norm for stage in m.segformer.stages],
    reshape=lambda x, m, hw: tokens_to_map(x, stage_grid(x.shape[1], grids(m.config, *hw))),
    head=lambda m: m.classifier,
    pooling="mean",
    # Last stage's efficient self-attention: B×heads×(h·w)×(h'·w'), keys reduced by sr_ratio, no CLS.
    # The head mean-pools layer-normed tokens: LeGrad's per-block score; no rollout across stages.
    attention=Attention(
        modules=lambda m: [block.attention for block in m.segformer.stages[-1].blocks],
        prefix=lambda m: 0,
        readout=None,
        blocks=lambda m: list(m.segformer.stages[-1].blocks),
        score=lambda m: lambda z: m.classifier(m.segformer.stages[-1].layer_norm(z).mean(1)),
        spans_model=False,
    ),
    unsupported={
        "attention": "SegFormer has no readout token: every token's attention is local evidence mixing, not what the "
                     "mean-pooled head reads; use legrad (class-specific, built for mean-pooled models) or gradcam",
    },
    default_method="legrad",  # trained test model: 0.33 of peaks on the object (GradCAM 0.10)
    description="SegFormer: last stage's layer_norm tokens → grid from the overlapping patch embeddings.",
)


#: ``SegformerForSemanticSegmentation``: the all-MLP decode head fuses the four stages' maps, upsampled to
#: the first stage's grid (1/4 of the input), in ``decode_head.linear_fuse`` (a 1×1 conv, ``B×C×h×w``) before
#: its norm and per-pixel classifier: the CAM methods read that fused map (every stage's evidence at 1/4).
SEMANTIC = Recipe(
    name="segformer-semantic",
    model_types=("segformer",),
    matches=lambda m: type(m).__name__.endswith("ForSemanticSegmentation"),
    target_layers=lambda m: [m.decode_head.linear_fuse],
    default_method="hirescam",  # trained segmenter: region peaks 1.00, energy 0.73 (gradcam 0.99 / 0.53)
    description="SegFormer segmenter: the decode head's fused map of all stages (B×C×h×w at 1/4 of the input).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
    register(SEMANTIC)
