"""CvT (``microsoft/cvt-13``): explained at the last layer's first layernorm.

The last stage appends a CLS token (``config.cls_token[-1]``) and the classifier reads only that
token, after ``model.layernorm``; so, as for ViT, the evidence is read from the patch tokens
the last layer attends over: ``stages[-1].layers[-1].layernorm_before``, tokens
``B×(cls + h·w)×C``. Each stage starts with a strided conv embedding, so the grid follows the
config's patch sizes, strides and paddings for the actual input size. Deep Feature
Factorization reads the last layer's output tokens and names concepts through ``layernorm`` +
classifier, as the model does (the tutorial's "sneaky LayerNorm").
"""

from torch import nn

from xai_recipes import Attention, Recipe, conv_out, hookimpl, tokens_to_map


def grid(config, height: int, width: int) -> tuple[int, int]:
    for k, s, p in zip(config.patch_sizes, config.patch_stride, config.patch_padding):
        height, width = conv_out(height, k, s, p), conv_out(width, k, s, p)
    return height, width


RECIPE = Recipe(
    name="cvt",
    model_types=("cvt",),
    target_layers=lambda m: [m.cvt.encoder.stages[-1].layers[-1].layernorm_before],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m.config, *hw), prefix=int(m.config.cls_token[-1])),
    head=lambda m: nn.Sequential(m.layernorm, m.classifier),
    feature_layer=lambda m: m.cvt.encoder.stages[-1].layers[-1],  # DFF: the last layer's output tokens
    pooling="cls",
    # HF CvT returns no attentions: its self-attention's dropout module outputs the probabilities
    # B×heads×(1 + h·w)×(1 + h'·w'), keys spatially reduced by the strided conv projection (stride_kv).
    attention=Attention(
        modules=lambda m: [layer.attention.attention.dropout for layer in m.cvt.encoder.stages[-1].layers],
        item=None,
        prefix=lambda m: int(m.config.cls_token[-1]),
        readout=(0,),
        blocks=lambda m: list(m.cvt.encoder.stages[-1].layers),
        score=lambda m: lambda z: m.classifier(m.layernorm(z[:, :1]).mean(1)),
        spans_model=False,  # last stage only, reduced keys: attention and legrad, no rollout
    ),
    default_method="gradcam++",  # the best measured on the trained test model (0.42; GradCAM 0.35, attention 0.17)
    description="CvT: last layer's layernorm_before, CLS dropped, grid from the conv embeddings; head = layernorm + classifier.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
