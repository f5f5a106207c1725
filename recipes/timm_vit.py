"""timm Vision Transformers (``timm/vit_*``), with or without CLS, register tokens and GAP heads.

Wrapped as ``TimmWrapperForImageClassification`` (``model.timm_model``). Explained, like HF ViT,
at the last block's first norm (``blocks[-1].norm1``): the tokens the last attention reads.
Tokens are ``B×(num_prefix_tokens + h·w)×C``: timm counts CLS and register tokens in
``num_prefix_tokens``, and the grid is the patch embedding's for the actual input size.
For DFF the features are the final ``norm`` output; the head is ``fc_norm`` + ``head`` on the
mean of the patch tokens (GAP models, ``global_pool="avg"``), or ``head`` on the CLS token.
"""

from torch import nn

from xai_recipes import Attention, Recipe, hookimpl, tokens_to_map


def grid(vit, height: int, width: int) -> tuple[int, int]:
    embed = vit.patch_embed
    if hasattr(embed, "dynamic_feat_size"):
        return tuple(embed.dynamic_feat_size((height, width)))
    return height // embed.patch_size[0], width // embed.patch_size[1]


def reshape(tokens, model, hw):
    vit = model.timm_model
    return tokens_to_map(tokens, grid(vit, *hw), prefix=vit.num_prefix_tokens)


def is_vit(pool: str):
    def matches(m) -> bool:
        from timm.models.vision_transformer import VisionTransformer  # on use: timm takes a second to import

        return isinstance(m.timm_model, VisionTransformer) and m.timm_model.global_pool == pool

    return matches


def attention(readout):
    """timm's attention computes the probabilities when unfused; its ``attn_drop`` outputs them."""
    return Attention(
        modules=lambda m: [block.attn.attn_drop for block in m.timm_model.blocks],
        item=None,
        prefix=lambda m: m.timm_model.num_prefix_tokens,
        readout=readout,
        blocks=lambda m: list(m.timm_model.blocks),
        score=lambda m: lambda z: m.timm_model.forward_head(m.timm_model.norm(z)),  # timm's own pooling + head
    )


COMMON = dict(
    model_types=("timm_wrapper",),
    target_layers=lambda m: [m.timm_model.blocks[-1].norm1],
    reshape=reshape,
    feature_layer=lambda m: m.timm_model.norm,
)

CLS_TOKEN = Recipe(
    name="timm_vit",
    head=lambda m: m.timm_model.head,
    pooling="cls",
    matches=is_vit("token"),
    attention=attention((0,)),
    # trained CLS + reg4 test model (tests/trained/timm_vit_cls), share of peaks on the object in 60 held-out images:
    # gradient-rollout 0.68, legrad 0.73, attention 0.72, rollout 0.68, gradcam 0.53, hirescam 0.52, gradcam++ 0.47
    # (all metrics: its gallery page's quality table)
    default_method="gradient-rollout",
    description="timm ViT (CLS head): last block's norm1, CLS/register tokens dropped, grid from the patch embed.",
    **COMMON,
)

GAP = Recipe(
    name="timm_vit_gap",
    head=lambda m: nn.Sequential(m.timm_model.fc_norm, m.timm_model.head),
    pooling="mean",
    matches=is_vit("avg"),
    attention=attention(None),  # mean-pooled patch tokens: no readout token
    default_method="legrad",  # trained reg4-GAP test model: 0.78 (GradCAM 0.60, rollout 0.73)
    description="timm ViT (GAP head, e.g. reg4_gap): last block's norm1, register tokens dropped; head = fc_norm + head.",
    **COMMON,
)


@hookimpl
def register_recipes(register):
    register(CLS_TOKEN)
    register(GAP)
