"""Deformable DETR (``SenseTime/deformable-detr``, with box refinement, two-stage): explained per detection.

Deformable DETR reads several feature levels, not one: each backbone stage it uses (strides 8, 16
and 32 in the released checkpoints) goes through its own 1×1 convolution + GroupNorm in
``model.input_proj`` (a ``ModuleList``, one ``B×d×h×w`` map per level), and extra levels are
stride-2 3×3 convolutions of the last stage (stride 64). The encoder's deformable attention samples
all levels; so do the decoder's queries.

Each level fed by a backbone stage is a stage of the recipe: the CAM methods read the **deepest one
whose grid is at least 7 cells on its short side** at the input being explained (the library's rule
for hierarchical models, :mod:`xai_recipes.layers`). At the published input sizes (800 px and more)
that is the last stage's projection at stride 32: the map DETR itself is explained at. On small
inputs, where stride 32 leaves a 2×3 grid, it is the level before. The extra stride-64 levels are
left out: they are convolutions of that same last stage, no deeper in the backbone, only coarser.

Scores: sigmoid per class (focal loss, no "no object" class); the image processor keeps the top
100 query-class pairs over all queries, so one query may be detected as two classes. Each detection
is explained by the logit of its own query and class (the ``object-detection`` task).

Building a random model from a config needs ``decoder_layers >= 2`` (transformers 5 ties the
per-layer heads ``bbox_embed.1..`` to ``bbox_embed.0`` and refuses a model with nothing to tie).
"""

from xai_recipes import Recipe, hookimpl


def levels(model):
    """The projections of the backbone's stages, fine to coarse (not the extra stride-2 levels)."""
    model = model.model
    return list(model.input_proj)[: len(model.backbone.intermediate_channel_sizes)]


RECIPE = Recipe(
    name="deformable_detr",
    model_types=("deformable_detr",),
    target_layers=lambda m: levels(m)[-1:],
    stages=levels,
    description="Deformable DETR: the deepest projected backbone level whose grid is ≥ 7 (stride 32 at 800 px).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
