"""Tiny configs and real-type image processors for the eight tutorial families.

Each family keeps the structure of its published checkpoints (same model class, same processor
class with its resize / centre-crop / channel-flip behaviour) at a size that trains on a CPU.
Two stages instead of four keep the last feature map at stride 8 (8×8 at 64 px, as fine as
the published models' 7×7 at 224 px), fine enough for a localisation test to mean something.
ConvNeXt, TextNet, HGNet-v2 and PP-LCNet end at stride 4 instead: at stride 8 their GradCAM peaks
sat on the object's edge (numbers beside each config and in test_localisation).
"""

from __future__ import annotations

import transformers as T

from synthetic import SHAPES

FAMILIES = ("resnet", "regnet", "convnext", "swin", "vit", "cvt", "segformer", "mobilevit")
#: Architectures with no hand-written recipe (explained by a derived one), and a timm ViT with registers.
DERIVED = ("efficientnet", "poolformer", "pvt_v2", "bit", "mobilenet_v2", "textnet", "hgnet_v2", "pp_lcnet", "deit")
TIMM = ("timm_vit_reg", "timm_vit_cls")
#: Hand-written recipes with no tutorial model: DINOv2 (CLS + patch-mean head) and SigLIP 2 (NaFlex patches, mean-pooled).
#: ``dino_gam`` (tests/trained/dino_gam) is no trained network: a GAM head fitted on the trained DINOv2's patch tokens.
RECIPE_FAMILIES = ("dinov2", "siglip2")
#: Three-stage versions of the hierarchical families, trained at 64 px like the rest: their last stage is
#: at stride 16 (4×4 at 64 px, as a published four-stage model's at 128 px) and the stage before it 8×8;
#: they test the resolution-aware choice of layer (tests/test_layers.py).
STRIDE16 = ("convnext_s16", "swin_s16", "segformer_s16", "pvt_v2_s16", "poolformer_s16")

_LABELS = {"id2label": dict(enumerate(SHAPES)), "label2id": {s: i for i, s in enumerate(SHAPES)}}
_CROP = {"size": {"shortest_edge": 64}, "crop_pct": 0.875}  # microsoft/resnet-50-style resize + crop


def tiny_config(family: str) -> T.PretrainedConfig:
    if family in STRIDE16:
        return _stride16_config(family)
    if family == "resnet":
        return T.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2], layer_type="basic", **_LABELS)
    if family == "regnet":  # RegNet-X (facebook/regnet-x-*): no squeeze-excitation, see test_localisation
        return T.RegNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2], groups_width=8, layer_type="x", **_LABELS)
    if family == "convnext":  # 2-pixel patch stem: last stage at stride 4 (16×16; at stride 8 GradCAM 0.23, here 0.72)
        return T.ConvNextConfig(patch_size=2, hidden_sizes=[32, 64], depths=[1, 2], num_stages=2, layer_scale_init_value=1.0, **_LABELS)
    if family == "swin":
        return T.SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, **_LABELS)
    if family == "vit":
        return T.ViTConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, **_LABELS)
    if family == "dinov2":  # the ViT's size; head on concat(CLS, patch mean); layer scale 1, no registers
        return T.Dinov2Config(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2,
                              **_LABELS)
    if family == "siglip2":  # the ViT's size; no CLS, mean-pooled post_layernorm tokens (the MAP head is unused: dropped)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, patch_size=8, num_patches=64,
                      vision_use_head=False)
        # text tower: never built for the classifier; its vocabulary covers the default bos/eos ids (49406, 49407)
        return T.Siglip2Config(vision_config=vision, text_config=dict(vocab_size=49408), **_LABELS)
    if family == "deit":  # the ViT's size; CLS + distillation token (2 prefix tokens), classifier on CLS.
        # `architectures` names the class: DeiT maps to two, and transformers 5.24's from_config fails on None
        return T.DeiTConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=128, architectures=["DeiTForImageClassification"], **_LABELS)
    if family == "cvt":
        n = 2  # CvT's config wants every per-stage list spelled out
        return T.CvtConfig(
            patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], embed_dim=[32, 64],
            num_heads=[2, 4], depth=[1, 2], cls_token=[False, True], mlp_ratio=[2.0] * n,
            attention_drop_rate=[0.0] * n, drop_rate=[0.0] * n, drop_path_rate=[0.0] * n, qkv_bias=[True] * n,
            qkv_projection_method=["dw_bn"] * n, kernel_qkv=[3] * n, padding_kv=[1] * n, stride_kv=[2] * n,
            padding_q=[1] * n, stride_q=[1] * n, **_LABELS,
        )
    if family == "segformer":
        return T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1], hidden_sizes=[32, 64],
            patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], **_LABELS,
        )
    if family == "mobilevit":
        return T.MobileViTConfig(
            image_size=64, neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], hidden_sizes=[16, 24, 32],
            expand_ratio=2.0, num_attention_heads=2, output_stride=8, **_LABELS,  # dilated: 8×8 at 64 px
        )
    if family == "efficientnet":  # strides cut to a stride-8 last map, like the others
        return T.EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.34,
                                    strides=[1, 2, 2, 1, 1, 1, 1], hidden_dim=320, **_LABELS)
    if family == "poolformer":
        return T.PoolFormerConfig(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[32, 64], patch_sizes=[7, 3],
                                  strides=[4, 2], padding=[2, 1], pool_size=3, mlp_ratio=2.0, **_LABELS)
    if family == "pvt_v2":
        return T.PvtV2Config(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[32, 64], patch_sizes=[7, 3], strides=[4, 2],
                             num_attention_heads=[1, 2], sr_ratios=[2, 1], mlp_ratios=[2, 2], **_LABELS)
    if family == "bit":
        return T.BitConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2], layer_type="bottleneck", num_groups=8, **_LABELS)
    if family == "mobilenet_v2":  # dilated to output stride 8, as the config allows
        return T.MobileNetV2Config(image_size=64, depth_multiplier=0.35, output_stride=8, **_LABELS)
    if family == "textnet":  # two stages, stride 4 (at stride 8 its peaks sat on the object's edge: 0.62)
        return T.TextNetConfig(stem_out_channels=16, image_size=64, hidden_sizes=[16, 32, 64],
                               conv_layer_kernel_sizes=[[[3, 3], [3, 3]], [[3, 3], [1, 3], [3, 1]]],
                               conv_layer_strides=[[2, 1], [1, 1, 1]], **_LABELS)
    if family == "hgnet_v2":  # stem stride 4, no stage downsamples: 16×16 at 64 px; 5×5 last stage
        return T.HGNetV2Config(
            embedding_size=16, depths=[1, 2], hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
            stage_in_channels=[16, 32], stage_mid_channels=[16, 32], stage_out_channels=[32, 64], stage_num_blocks=[1, 2],
            stage_downsample=[False, False], stage_downsample_strides=[2, 2], stage_light_block=[False, False],
            stage_kernel_size=[3, 5], stage_numb_of_layers=[2, 3], **_LABELS,
        )
    if family == "pp_lcnet":  # [kernel, in, out, stride, squeeze-excite] per block; stride 4, 5×5 last
        return T.PPLCNetConfig(stem_channels=16, block_configs=[
            [[3, 16, 32, 1, False]], [[3, 32, 32, 2, False]], [[3, 32, 64, 1, False]], [[5, 64, 64, 1, False]],
            [[5, 64, 64, 1, True]]], depths=[1, 1, 1, 1, 1], class_expand=128, hidden_dropout_prob=0.0, **_LABELS)
    raise KeyError(family)


def _stride16_config(family: str) -> T.PretrainedConfig:
    three = {"patch_sizes": [7, 3, 3], "strides": [4, 2, 2], "hidden_sizes": [32, 48, 64], "depths": [1, 1, 2]}
    if family == "convnext_s16":
        return T.ConvNextConfig(patch_size=4, hidden_sizes=[32, 48, 64], depths=[1, 1, 2], num_stages=3,
                                layer_scale_init_value=1.0, **_LABELS)
    if family == "swin_s16":
        return T.SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 4], window_size=4, **_LABELS)
    if family == "segformer_s16":
        return T.SegformerConfig(num_encoder_blocks=3, sr_ratios=[4, 2, 1], num_attention_heads=[1, 2, 2], mlp_ratios=[2, 2, 2],
                                 **three, **_LABELS)
    if family == "pvt_v2_s16":
        return T.PvtV2Config(num_encoder_blocks=3, sr_ratios=[4, 2, 1], num_attention_heads=[1, 2, 2], mlp_ratios=[2, 2, 2],
                             **three, **_LABELS)
    if family == "poolformer_s16":
        return T.PoolFormerConfig(num_encoder_blocks=3, padding=[2, 1, 1], pool_size=3, mlp_ratio=2.0, **three, **_LABELS)
    raise KeyError(family)


#: The timm ViTs' heads: 4 register tokens and a GAP head (``vit_*_reg4_gap``-style: the ``timm_vit_gap``
#: recipe), or a CLS token read by the head as well (the ``timm_vit`` recipe).
TIMM_HEADS = {"timm_vit_reg": dict(global_pool="avg", class_token=False),
              "timm_vit_cls": dict(global_pool="token", class_token=True)}


def tiny_timm_vit(family: str):
    """The timm ViT of ``family`` (:data:`TIMM_HEADS`), wrapped, with timm's own eval transform (resize +
    centre crop 0.9) as its processor."""
    import timm

    import xai_recipes

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=64, depth=3,
                            num_heads=4, reg_tokens=4, num_classes=len(SHAPES), **TIMM_HEADS[family])
    return xai_recipes.wrap_timm_model(vit, labels=list(SHAPES))


def tiny_processor(family: str):
    family = family.removesuffix("_s16")
    if family in ("resnet", "regnet", "convnext", "cvt"):
        return T.ConvNextImageProcessor(**_CROP)
    if family in ("swin", "vit", "dinov2"):
        return T.ViTImageProcessor(size={"height": 64, "width": 64})
    if family == "siglip2":  # NaFlex: aspect-preserving resize to at most 64 patches of 8 px, padded to 64
        return T.Siglip2ImageProcessor(patch_size=8, max_num_patches=64)
    if family == "deit":  # facebook/deit-*-style: resize to a square, centre crop
        return T.DeiTImageProcessor(size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64})
    if family == "segformer":
        return T.SegformerImageProcessor(size={"height": 64, "width": 64})
    if family == "mobilevit":  # resize short side, centre-crop, RGB→BGR like apple/mobilevit-small
        return T.MobileViTImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}, do_flip_channel_order=True)
    if family == "efficientnet":  # google/efficientnet-b0-style: resize, centre crop
        return T.EfficientNetImageProcessor(size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64}, do_center_crop=True)
    if family == "poolformer":  # sail/poolformer_s12-style: shortest edge + crop_pct 0.9
        return T.PoolFormerImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, crop_pct=0.9)
    if family == "pvt_v2":
        return T.PvtImageProcessor(size={"height": 64, "width": 64})
    if family == "bit":  # google/bit-50-style: shortest edge + centre crop
        return T.BitImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    if family == "textnet":
        return T.TextNetImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True)
    if family == "mobilenet_v2":
        return T.MobileNetV2ImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    if family == "hgnet_v2":  # timm-style resize of the short side + centre crop
        return T.BitImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    if family == "pp_lcnet":  # PaddlePaddle-style: resize_short + crop, BGR mean/std order
        return T.PPLCNetImageProcessor(resize_short=72, size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64})
    raise KeyError(family)
