"""Mask classifiers (``facebook/mask2former-swin-tiny-ade-semantic``, ``facebook/maskformer-swin-tiny-ade``):
per-pixel class scores from the queries, explained at the pixel decoder's mask features.

Mask2Former and MaskFormer predict, per query ``q``, class logits ``z_q`` (the last class: "no object") and a
mask ``m_q``. Their semantic inference (MaskFormer, Cheng et al. 2021, §3.4; transformers'
``post_process_semantic_segmentation``) scores class ``c`` at pixel ``x`` by
``S_c(x) = Σ_q softmax(z_q)[c] · sigmoid(m_q(x))`` and takes the argmax: the recipes' ``logits`` are that
``B×C×h×w`` map, computed as the post-processing does (Mask2Former first upsamples the masks to 384×384,
MaskFormer does not), so a class's score in the image-segmentation task is ``S_c`` summed over its region
(grad-cam's ``SemanticSegmentationTarget`` on ``S``), one target per predicted class. Every query's mask is
the dot product of its embedding with ``model.pixel_level_module.decoder.mask_projection``'s ``B×C×h×w``
mask features (1/4 of the input): the CAM methods read those.
"""

import torch

from xai_recipes import Recipe, hookimpl


def semantic_scores(output, size=None) -> torch.Tensor:
    """``S = Σ_q softmax(class logits)[..., :-1] · sigmoid(mask logits)`` (``B×C×h×w``), the masks first
    upsampled bilinearly to ``size`` where the model's post-processing does so."""
    masks = output.masks_queries_logits
    if size is not None:
        masks = torch.nn.functional.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    classes = output.class_queries_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc, bqhw -> bchw", classes, masks.sigmoid())


RECIPE = Recipe(
    name="mask2former",
    model_types=("mask2former",),
    target_layers=lambda m: [m.model.pixel_level_module.decoder.mask_projection],
    logits=lambda output: semantic_scores(output, (384, 384)),  # Mask2FormerImageProcessor's fixed 384×384
    description="Mask2Former: per-pixel class scores Σ_q p_q(c)·σ(m_q) (its semantic post-processing), explained at "
                "the pixel decoder's mask features.",
)

MASKFORMER = Recipe(
    name="maskformer",
    model_types=("maskformer",),
    target_layers=lambda m: [m.model.pixel_level_module.decoder.mask_projection],
    logits=semantic_scores,
    description="MaskFormer: per-pixel class scores Σ_q p_q(c)·σ(m_q) (its semantic post-processing), explained at "
                "the pixel decoder's mask features.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
    register(MASKFORMER)
