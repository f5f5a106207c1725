"""A tiny INTR classifier (Paul et al., ICLR 2024) built from transformers' DETR.

INTR is DETR with one decoder query per *class* instead of per object slot: the class queries
(DETR's ``query_position_embeddings``, ``num_queries == num_labels``) cross-attend to the image
features, and each query's decoder output ``h_c`` is scored against one shared, class-agnostic
presence vector ``p``: ``logit_c = <h_c, p> + b`` (one scalar ``b`` for all classes). Nothing
class-specific happens after the cross-attention, so class ``c``'s cross-attention over the image
*is* what decides its logit: that is the explanation, one map per head.

``IntrConfig`` subclasses ``DetrConfig`` (``model_type = "intr"``) and ``IntrForImageClassification``
wraps a ``DetrModel`` (a transformers backbone through ``load_backbone``, sine position embeddings,
DETR encoder and decoder) plus the presence vector. Importing this module registers both with
``AutoConfig`` and ``AutoModelForImageClassification``, so ``save_pretrained`` / ``from_pretrained`` and
``xai_recipes.explain(folder, image)`` work on saved checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForImageClassification, ConvNextConfig, DetrConfig, DetrModel,
                          PreTrainedModel, ResNetConfig)
from transformers.modeling_outputs import ImageClassifierOutput

MODEL_TYPE = "intr"


class IntrConfig(DetrConfig):
    """``DetrConfig`` whose ``num_queries`` is the number of classes (one query per class)."""

    model_type = MODEL_TYPE


def tiny_config(id2label: dict[int, str], d_model: int = 64, heads: int = 4, encoder_layers: int = 0,
                decoder_layers: int = 1, backbone: str = "convnext") -> IntrConfig:
    """The tiny INTR of the shipped checkpoint: a 2-stage ConvNeXt at stride 8 (4×4 patchify stem,
    then a 2×2 downsampling), a 1×1 projection to ``d_model``, no DETR encoder layer, one decoder
    layer, ``heads`` attention heads, one query per class.

    ``backbone="resnet"``: a 2-stage ResNet at stride 8 instead (7×7 stem and max-pool, then one
    strided stage), as DETR has; its features are centred half a cell off the grid (see TRAINING.txt).
    """
    if backbone == "convnext":
        backbone_config = ConvNextConfig(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[32, 64],
                                         depths=[1, 1], out_features=["stage2"])
    elif backbone == "resnet":
        backbone_config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                                       layer_type="basic", downsample_in_first_stage=False, out_features=["stage2"])
    else:
        raise ValueError(f"backbone must be 'convnext' or 'resnet', got {backbone!r}")
    return IntrConfig(
        backbone_config=backbone_config, use_timm_backbone=False, use_pretrained_backbone=False,
        num_queries=len(id2label), d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, dropout=0.0, id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()}, architectures=["IntrForImageClassification"])


class IntrPreTrainedModel(PreTrainedModel):
    config: IntrConfig
    config_class = IntrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True  # DETR's attention runs SDPA by default; eager gives the probabilities


class IntrForImageClassification(IntrPreTrainedModel):
    """INTR: ``logits[b, c] = presence(decoder_output[b, c])``, one decoder query per class.

    Modules: ``model`` (a ``DetrModel``: ``model.backbone``, ``model.input_projection``,
    ``model.encoder``, ``model.decoder``; the class queries are ``model.query_position_embeddings``)
    and ``presence`` (``Linear(d_model, 1)``: the shared presence vector and one shared bias).

    With ``output_attentions=True`` (and eager attention), ``attentions`` holds the decoder's
    cross-attentions, one ``B×heads×classes×(h·w)`` tensor per decoder layer.
    """

    def __init__(self, config: IntrConfig) -> None:
        super().__init__(config)
        if config.num_queries != config.num_labels:
            raise ValueError(f"INTR needs one decoder query per class: num_queries={config.num_queries} but "
                             f"num_labels={config.num_labels}")
        self.model = DetrModel(config)
        # DETR freezes a (pretrained) ResNet backbone's stem and first stage; this INTR trains from scratch.
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        self.presence = nn.Linear(config.d_model, 1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, **kwargs) -> ImageClassifierOutput:
        out = self.model(pixel_values=pixel_values, output_attentions=bool(output_attentions), **kwargs)
        logits = self.presence(out.last_hidden_state).squeeze(-1)  # B×classes
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits,
                                     attentions=out.cross_attentions if output_attentions else None)


def init_for_training_(model: IntrForImageClassification) -> IntrForImageClassification:
    """DETR's original initialisation, for training from scratch (in place): Xavier for the
    transformer's projections and the presence vector, N(0, 1) class queries, He for convolutions.

    transformers' default (N(0, 0.02) for queries, projections and the 1×1 input projection) leaves
    every class query attending uniformly, with identical outputs and logits: a saddle point that
    training did not leave in 400 steps. Only for fresh models: ``from_pretrained`` loads weights.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight)
    return model


AutoConfig.register(MODEL_TYPE, IntrConfig, exist_ok=True)
AutoModelForImageClassification.register(IntrConfig, IntrForImageClassification, exist_ok=True)
