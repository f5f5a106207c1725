"""RT-DETR v1 and v2 (``PekingU/rtdetr_r50vd``, ``PekingU/rtdetr_v2_r18vd``): explained per detection.

RT-DETR's hybrid encoder runs attention (AIFI) on the coarsest backbone level only and then fuses
every level top-down and bottom-up (CCFM: an FPN and a PAN of convolutions), so each of its output
maps holds every level's evidence. ``model.decoder_input_proj`` projects each of those maps (1×1
convolution + BatchNorm, ``B×d×h×w`` per level) into the memory the decoder reads: the encoder's
query selection picks its top-scoring positions there as the initial queries, and the decoder's
deformable cross-attention samples it. That is the map the detections depend on, and the CAM
methods read it.

Each level projected from the encoder (strides 8, 16, 32 in the released checkpoints; any extra
stride-2 level is a convolution of the coarsest) is a stage: the CAM methods read the **deepest
one whose grid is at least 7 cells on its short side** at the input being explained (the
library's rule for hierarchical models). At the processor's 640×640 that is stride 32 (20×20),
the level where the encoder's attention ran; on small inputs, the level before it.

Scores: sigmoid per class (focal loss); the image processor keeps the top ``num_queries``
query-class pairs over all queries (one query may be two detections). Each detection is
explained by the logit of its own query and class (the ``object-detection`` task).

RT-DETR v2 only changes the decoder's sampling (per-level offsets, discrete sampling); its layout
is v1's. Building a random v2 from a config needs ``decoder_layers >= 2`` (transformers 5 ties the
per-layer heads and refuses a model with nothing to tie).
"""

from xai_recipes import Recipe, hookimpl


def levels(model):
    """The projections of the hybrid encoder's output maps, fine to coarse (not extra stride-2 levels)."""
    model = model.model
    return list(model.decoder_input_proj)[: len(model.config.decoder_in_channels)]


RECIPE = Recipe(
    name="rt_detr",
    model_types=("rt_detr", "rt_detr_v2"),
    target_layers=lambda m: levels(m)[-1:],
    stages=levels,
    description="RT-DETR v1/v2: the hybrid encoder's fused map projected for the decoder (deepest level with grid ≥ 7).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
