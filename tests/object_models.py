"""Random tiny detectors and segmenters built from configs, for the tests of the detection and segmentation tasks."""

from __future__ import annotations

import numpy as np
import torch
import transformers as T

LABELS = {0: "a", 1: "b", 2: "c"}
#: A 60×80 random picture: the random DETR's detections all lie around (20, 15, 60, 45) on it.
IMAGE = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)


def warm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` after one forward pass: transformers 5 installs its output-recording hooks on a model's first
    call and keeps them, so a test comparing hooks before and after an ``explain()`` starts from a used model."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, 64, 64, dtype=dtype))
    return model


def random_detr(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[T.DetrForObjectDetection, T.DetrImageProcessor]:
    """A DETR with a 2-stage ResNet backbone, 1 encoder and 1 decoder layer, 5 queries, 3 labels."""
    torch.manual_seed(seed)
    backbone = T.ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=8, layer_type="basic",
                              out_features=["stage2"])
    config = T.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                          encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=3, id2label=LABELS,
                          label2id={v: k for k, v in LABELS.items()})
    model = T.DetrForObjectDetection(config).to(dtype).eval()
    return warm(model), T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def random_segformer(seed: int = 0, dtype: torch.dtype = torch.float32
                     ) -> tuple[T.SegformerForSemanticSegmentation, T.SegformerImageProcessor]:
    """A two-stage SegFormer segmenter with 4 classes (``bg``, ``a``, ``b``, ``c``) at 64×64."""
    torch.manual_seed(seed)
    labels = {0: "bg", 1: "a", 2: "b", 3: "c"}
    config = T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                               patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                               decoder_hidden_size=32, num_labels=4, id2label=labels,
                               label2id={v: k for k, v in labels.items()})
    model = T.SegformerForSemanticSegmentation(config).to(dtype).eval()
    return warm(model), T.SegformerImageProcessor(size={"height": 64, "width": 64})
