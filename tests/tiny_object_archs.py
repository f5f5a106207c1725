"""Tiny random-init configs for every transformers object detector and segmenter.

``DETECTORS`` lists every key of ``MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES``, ``SEGMENTERS`` every key of
``MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES`` and ``UNIVERSAL`` every key of
``MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES`` (panoptic / instance / semantic from mask queries). Each
kind is one of :data:`KINDS`; ``tiny_model(kind, model_type)`` builds the mapping's class from a tiny config
(``torch.manual_seed(0)``, small widths, one or two layers, 5 queries, :data:`NUM_LABELS` labels, a tiny
ResNet / HGNetV2 / ConvNeXt / ViT backbone config with ``use_pretrained_backbone=False`` and
``use_timm_backbone=False`` where the config has them, BatchNorm calibrated), and ``processor(kind,
model_type)`` its ``AutoImageProcessor`` class for the model type constructed for a small input (about 64 px).

``UNBUILDABLE[kind][model_type]``: why the architecture cannot be built or run offline here (none so far);
``UNLIKE[kind][model_type]``: builds and runs, but is not what its table's task explains (PP-OCR's text
detectors: a probability map, no queries; OneFormer: needs a task prompt; VideoMT: takes videos).
Where a model type has no ``AutoImageProcessor`` mapping, ``PROCESSOR_CLASSES`` names the one its
checkpoints use.

Run ``python tests/tiny_object_archs.py`` for a self-check (build, a forward pass on the processor's input).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
import transformers as T
from transformers import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import calibrate_batchnorm  # noqa: E402

DETECTION, SEMANTIC, UNIVERSAL_KIND = "object-detection", "semantic-segmentation", "universal-segmentation"
MAPPINGS = {DETECTION: MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, SEMANTIC: MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
            UNIVERSAL_KIND: MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES}
KINDS = tuple(MAPPINGS)
DETECTORS: list[str] = list(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)
SEGMENTERS: list[str] = list(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)
UNIVERSAL: list[str] = list(MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES)

NUM_LABELS = 4
ID2LABEL = {i: f"class {i}" for i in range(NUM_LABELS)}
LABELS = dict(num_labels=NUM_LABELS, id2label=dict(ID2LABEL), label2id={v: k for k, v in ID2LABEL.items()})
SIDE = 64  # the processors' input side

# ---- backbone configs ------------------------------------------------------------------------------------------

STAGES3 = ["stage1", "stage2", "stage3"]
STAGES4 = ["stage1", "stage2", "stage3", "stage4"]


def resnet(out_features=("stage2",)) -> T.PretrainedConfig:
    """A basic-block ResNet of 3 stages (widths 16, 32, 32), or of 4 (…, 32) if ``out_features`` reaches stage4."""
    n = max(3, max(int(f[5:]) for f in out_features))
    return T.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 32, 32][:n], depths=[1] * n, layer_type="basic",
                          out_features=list(out_features))


def hgnet() -> dict[str, Any]:
    """An HGNetV2 of 4 small stages, the last three out (RT-DETR-style encoders read strides 8, 16, 32)."""
    return dict(model_type="hgnet_v2", embedding_size=8, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 32, 32],
                stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 32], stage_mid_channels=[8, 8, 16, 16],
                stage_out_channels=[16, 32, 32, 32], stage_num_blocks=[1, 1, 1, 1],
                stage_downsample=[False, True, True, True], stage_downsample_strides=[2, 2, 2, 2],
                stage_light_block=[False, False, True, True], stage_kernel_size=[3, 3, 5, 5],
                stage_numb_of_layers=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"])


def rt_resnet() -> T.PretrainedConfig:
    """RT-DETR's ResNet-D of 4 stages, the last three out (strides 8, 16, 32; 32 channels each)."""
    return T.RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 32], depths=[1, 1, 1, 1], layer_type="basic",
                                out_features=["stage2", "stage3", "stage4"])


NO_PRETRAINED = dict(use_pretrained_backbone=False, use_timm_backbone=False)
DETR = dict(NO_PRETRAINED, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, dropout=0.0)
# RT-DETR-style hybrid encoder + deformable decoder over three 32-channel levels
RT = dict(encoder_hidden_dim=32, encoder_in_channels=[32, 32, 32], feat_strides=[8, 16, 32], encoder_ffn_dim=64,
          encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
          decoder_attention_heads=2, decoder_layers=2, num_queries=5, decoder_n_points=2, num_denoising=0,
          hidden_expansion=0.5)
# LW-DETR / RF-DETR: a windowed ViT (8×8 patches of 8 px, 2×2 windows) projected to 2 levels (×0.5, ×2)
WINDOWED = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, num_windows=4, image_size=SIDE)
LW = dict(d_model=32, projector_scale_factors=[0.5, 2.0], decoder_ffn_dim=64, decoder_layers=2, decoder_self_attention_heads=2,
          decoder_cross_attention_heads=4, num_queries=5, group_detr=2, dropout=0.0)
# PP-DocLayoutV2's reading-order head (a LayoutLMv3-style encoder over the boxes: 2·11 + 10 = 32 wide)
READING_ORDER = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1, coordinate_size=11,
                     shape_size=10, num_classes=NUM_LABELS, global_pointer_head_size=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
# PP-OCR text detectors (DB: a per-pixel text probability map): transformers' own test configs, shrunk
LCNET = dict(out_features=STAGES4, stem_channels=16, block_configs=[
    [[3, 16, 16, 1, False]], [[3, 16, 16, 2, False]], [[3, 16, 16, 2, False]], [[3, 16, 16, 2, False], [5, 16, 16, 1, False]]])
TEXT_SMALL = dict(layer_list_out_channels=[16, 16, 16, 16], neck_out_channels=16, kernel_list=[3, 2, 2])
TEXT_LARGE = dict(neck_out_channels=32, reduce_factor=2, intraclass_block_number=4, scale_factor=2, scale_factor_list=[1, 2, 4, 8],
                  kernel_list=[3, 2, 2], intraclass_block_config={
                      "reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0],
                      "vertical_long_to_small_conv_longratio": [[7, 1], [1, 1], [3, 0]],
                      "vertical_long_to_small_conv_midratio": [[5, 1], [1, 1], [2, 0]],
                      "vertical_long_to_small_conv_shortratio": [[3, 1], [1, 1], [1, 0]],
                      "horizontal_small_to_long_conv_longratio": [[1, 7], [1, 1], [0, 3]],
                      "horizontal_small_to_long_conv_midratio": [[1, 5], [1, 1], [0, 2]],
                      "horizontal_small_to_long_conv_shortratio": [[1, 3], [1, 1], [0, 1]],
                      "symmetric_conv_long_longratio": [[7, 7], [1, 1], [3, 3]],
                      "symmetric_conv_long_midratio": [[5, 5], [1, 1], [2, 2]],
                      "symmetric_conv_long_shortratio": [[3, 3], [1, 1], [1, 1]]})
SWIN = dict(model_type="swin", image_size=SIDE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
            window_size=4, drop_path_rate=0.0, out_features=STAGES4)
VIT = dict(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)

#: per kind and model type: keyword arguments for the config class (merged with the labels).
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    DETECTION: {
        "detr": dict(DETR, backbone_config=resnet()),
        "conditional_detr": dict(DETR, backbone_config=resnet()),
        "table-transformer": dict(DETR, backbone_config=resnet()),
        "dab-detr": dict({k: v for k, v in DETR.items() if k != "d_model"}, hidden_size=32, backbone_config=resnet()),
        "deformable_detr": dict(DETR, backbone_config=resnet(STAGES3), decoder_layers=2, num_feature_levels=4,
                                encoder_n_points=2, decoder_n_points=2, two_stage_num_proposals=5),
        "rt_detr": dict(RT, backbone_config=rt_resnet()),
        "rt_detr_v2": dict(RT, backbone_config=rt_resnet()),
        "lw_detr": dict(LW, backbone_config=T.LwDetrViTConfig(**WINDOWED, window_block_indices=[0, 2], out_indices=[1, 3])),
        "rf_detr": dict(LW, backbone_config=T.RfDetrDinov2Config(**WINDOWED, mlp_ratio=2, out_features=["stage2", "stage3"],
                                                                 layerscale_value=1.0, drop_path_rate=0.0)),
        "d_fine": dict(RT, backbone_config=hgnet()),
        "deimv2": dict(RT, backbone_config=hgnet()),
        "pp_doclayout_v2": dict(RT, backbone_config=hgnet(), class_thresholds=[0.5] * NUM_LABELS,
                                class_order=list(range(NUM_LABELS)), reading_order_config=READING_ORDER),
        # v3 also reads the stride-4 stage (x4_feat) for its mask prototypes
        "pp_doclayout_v3": dict(RT, backbone_config=dict(hgnet(), out_features=STAGES4), x4_feat_dim=16,
                                mask_feature_channels=[16, 16], num_prototypes=8, global_pointer_head_size=16),
        "pp_doclayout_v4": dict(RT, backbone_config=hgnet()),
        "pp_ocrv5_mobile_det": dict(TEXT_SMALL, backbone_config=dict(
            model_type="pp_lcnet_v3", out_features=["stage2", "stage3", "stage4", "stage5"], stem_channels=16,
            block_configs=[[[3, 16, 16, 1, False]], *LCNET["block_configs"][1:3], *LCNET["block_configs"][2:]])),
        "pp_ocrv6_small_det": dict(TEXT_SMALL, backbone_config=dict(LCNET, model_type="pp_lcnet_v4", stem_channels=[3, 16, 16],
                                                                    stem_type="large")),
        "pp_ocrv5_server_det": dict(TEXT_LARGE, backbone_config=dict(hgnet(), out_features=STAGES4)),
        "pp_ocrv6_medium_det": dict(TEXT_LARGE, backbone_config=dict(LCNET, model_type="pp_lcnet_v4", stem_channels=[3, 16, 16],
                                                                     stem_type="large")),
        "yolos": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      image_size=[SIDE, SIDE], patch_size=8, num_detection_tokens=5),
    },
    SEMANTIC: {
        "beit": dict(VIT, out_indices=[1, 2, 3, 4], pool_scales=[1, 2, 3, 6], use_relative_position_bias=True,
                     use_auxiliary_head=False, drop_path_rate=0.0),
        "data2vec-vision": dict(VIT, out_indices=[1, 2, 3, 4], pool_scales=[1, 2, 3, 6], use_auxiliary_head=False,
                                drop_path_rate=0.0),
        "dpt": dict(VIT, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16,
                    reassemble_factors=[4, 2, 1, 0.5], use_auxiliary_head=False),
        "mobilenet_v2": dict(image_size=SIDE, depth_multiplier=0.25, output_stride=8, classifier_dropout_prob=0.0),
        "mobilevit": dict(image_size=SIDE, neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], hidden_sizes=[16, 24, 32],
                          expand_ratio=2.0, num_attention_heads=2, output_stride=8, aspp_out_channels=16,
                          hidden_dropout_prob=0.0, classifier_dropout_prob=0.0),
        "mobilevitv2": dict(image_size=SIDE, width_multiplier=0.25, n_attn_blocks=[1, 1, 1], output_stride=8,
                            aspp_out_channels=16, classifier_dropout_prob=0.0),
        "sapiens2": dict(VIT, num_hidden_layers=2, num_register_tokens=2, stage_names=["stem", "stage1", "stage2"],
                         out_indices=[2], head_config=dict(
                             model_type="sapiens2_head", upsample_out_channels=[8, 8], upsample_kernel_sizes=[4, 4],
                             conv_out_channels=[8], conv_kernel_sizes=[1], scale_conv_out_channels=[8, 4, 4],
                             scale_conv_kernel_sizes=[1, 1, 1], scale_final_hidden_sizes=[8, 4])),
        "segformer": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                          strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                          drop_path_rate=0.0, classifier_dropout_prob=0.0),
        "tipsv2_dpt": dict(backbone_config=dict(model_type="tipsv2_vision_model", hidden_size=32, num_hidden_layers=4,
                                                num_attention_heads=2, mlp_ratio=2, image_size=SIDE, patch_size=8,
                                                out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
                           neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16, num_depth_bins=16),
        "upernet": dict(backbone_config=T.ConvNextConfig(patch_size=2, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                                         out_features=STAGES4),
                        hidden_size=16, pool_scales=[1, 2, 3, 6], use_auxiliary_head=False),
    },
    UNIVERSAL_KIND: {
        # the mask head's input is d_model + heads channels in groups of 8
        "detr": dict(DETR, backbone_config=resnet(STAGES4), encoder_attention_heads=8, decoder_attention_heads=8),
        "mask2former": dict(backbone_config=SWIN, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, num_queries=5, common_stride=4),
        "maskformer": dict(backbone_config=SWIN, fpn_feature_size=32, mask_feature_size=32, num_queries=5,
                           decoder_config=dict(model_type="detr", d_model=32, encoder_layers=1, decoder_layers=1,
                                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                               decoder_ffn_dim=32, num_queries=5)),
        "oneformer": dict(backbone_config=SWIN, num_queries=5, conv_dim=32, mask_dim=32, hidden_dim=32,
                          encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                          dim_feedforward=32, text_encoder_width=32, text_encoder_num_layers=1,
                          text_encoder_vocab_size=128, text_encoder_context_length=8, task_seq_len=8, text_encoder_proj_layers=1,
                          query_dec_layers=1, common_stride=4),
        "eomt": dict(VIT, num_register_tokens=2, num_blocks=1, num_upscale_blocks=1, num_queries=5),
        "eomt_dinov3": dict(VIT, num_register_tokens=2, num_blocks=1, num_upscale_blocks=1, num_queries=5),
        "videomt": dict(VIT, num_register_tokens=2, num_blocks=1, num_upscale_blocks=1, num_queries=5),
    },
}

#: per kind and model type: keyword arguments for the image processor (default: ``size`` SIDE×SIDE).
PROCESSORS: dict[str, dict[str, dict[str, Any]]] = {
    DETECTION: {
        "detr": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "conditional_detr": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "table-transformer": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "deformable_detr": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "yolos": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
    },
    SEMANTIC: {
        "beit": dict(size={"height": SIDE, "width": SIDE}, do_center_crop=False),
        "data2vec-vision": dict(size={"height": SIDE, "width": SIDE}, do_center_crop=False),
        "mobilenet_v2": dict(size={"shortest_edge": 73}, crop_size={"height": SIDE, "width": SIDE}),
        "mobilevit": dict(size={"shortest_edge": 73}, crop_size={"height": SIDE, "width": SIDE}),
        "mobilevitv2": dict(size={"shortest_edge": 73}, crop_size={"height": SIDE, "width": SIDE}),
    },
    UNIVERSAL_KIND: {
        "detr": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "mask2former": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "maskformer": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
        "oneformer": dict(size={"shortest_edge": SIDE, "longest_edge": 96}),
    },
}

#: model types without an ``AutoImageProcessor`` mapping: the processor their checkpoints name
PROCESSOR_CLASSES = {
    "dab-detr": "ConditionalDetrImageProcessor",  # IDEA-Research/dab-detr-resnet-50 (transformers' integration test)
    "d_fine": "RTDetrImageProcessor",  # ustc-community/dfine-*
    "rt_detr_v2": "RTDetrImageProcessor",  # PekingU/rtdetr_v2_*
    "videomt": "VideomtVideoProcessor",  # a video model (pixel_values_videos)
}

UNBUILDABLE: dict[str, dict[str, str]] = {DETECTION: {}, SEMANTIC: {}, UNIVERSAL_KIND: {}}

#: builds and runs, but is not what its table's task explains (a note for the table)
UNLIKE: dict[str, dict[str, str]] = {
    DETECTION: {mt: "a DB text detector: its output is a per-pixel text probability map (last_hidden_state B×1×H×W, "
                    "one class), its boxes are polygons traced on it; no object queries, no class logits"
                for mt in ("pp_ocrv5_mobile_det", "pp_ocrv5_server_det", "pp_ocrv6_medium_det", "pp_ocrv6_small_det")},
    SEMANTIC: {},
    UNIVERSAL_KIND: {
        "oneformer": "its forward also needs task_inputs (the tokenized task prompt, e.g. 'the task is semantic')",
        "videomt": "a video segmenter: its forward takes pixel_values_videos (B×frames×3×H×W), its processor is a "
                   "video processor",
    },
}


def model_class(kind: str, model_type: str) -> type:
    name = MAPPINGS[kind][model_type]
    return getattr(T, name[0] if isinstance(name, tuple) else name)


def tiny_config(kind: str, model_type: str) -> T.PretrainedConfig:
    """The config class for ``model_type`` with :data:`CONFIGS`' keyword arguments and :data:`NUM_LABELS` labels."""
    kwargs = copy.deepcopy(CONFIGS[kind].get(model_type, {}))  # a model may write into its backbone's config
    backbone = kwargs.get("backbone_config")
    if isinstance(backbone, dict):
        backbone = dict(backbone)
        kwargs["backbone_config"] = CONFIG_MAPPING[backbone.pop("model_type")](**backbone)
    config = CONFIG_MAPPING[model_type](**kwargs, **LABELS)
    config.architectures = [model_class(kind, model_type).__name__]
    return config


def tiny_model(kind: str, model_type: str) -> torch.nn.Module:
    """Random-init model from :func:`tiny_config` (seed 0), BatchNorm calibrated, in eval mode."""
    if model_type in UNBUILDABLE[kind]:
        raise RuntimeError(f"{model_type}: {UNBUILDABLE[kind][model_type]}")
    torch.manual_seed(0)
    model = model_class(kind, model_type)(tiny_config(kind, model_type))
    return calibrate_batchnorm(model).eval()


def processor(kind: str, model_type: str) -> Any:
    """The model type's ``AutoImageProcessor`` class (torchvision's, else PIL's) for a small input."""
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or PROCESSOR_CLASSES[model_type]
    name = (names.get("torchvision") or names.get("pil")) if isinstance(names, dict) else names
    kwargs = PROCESSORS[kind].get(model_type, dict(size={"height": SIDE, "width": SIDE}))
    return getattr(T, name)(**kwargs)


if __name__ == "__main__":
    import time
    import traceback

    import numpy as np

    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    wanted = sys.argv[1:]
    for kind in KINDS:
        for mt in MAPPINGS[kind]:
            if wanted and mt not in wanted:
                continue
            if mt in UNBUILDABLE[kind]:
                print(f"{kind:22s} {mt:22s} UNBUILDABLE: {UNBUILDABLE[kind][mt]}")
                continue
            t0 = time.perf_counter()
            try:
                model = tiny_model(kind, mt)
                if mt == "videomt":
                    inputs = {"pixel_values_videos": torch.randn(1, 2, 3, SIDE, SIDE)}
                else:
                    inputs = processor(kind, mt)(images=image, return_tensors="pt")
                    inputs = {"pixel_values": inputs["pixel_values"]}
                    if mt == "oneformer":  # the task prompt's token ids ("the task is semantic")
                        inputs["task_inputs"] = torch.ones(1, model.config.task_seq_len, dtype=torch.long)
                with torch.no_grad():
                    out = model(**inputs)
                n = sum(p.numel() for p in model.parameters())
                shapes = {k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)}
                print(f"{kind:22s} {mt:22s} {n:8d} {time.perf_counter() - t0:5.1f}s in {tuple(next(iter(inputs.values())).shape)} "
                      f"{shapes}")
            except Exception as exc:  # noqa: BLE001
                print(f"{kind:22s} {mt:22s} FAILED {type(exc).__name__}: {str(exc)[:400]}")
                if wanted:
                    traceback.print_exc()
