"""Tiny random-init configs for every ``AutoModelForImageClassification`` architecture.

``ARCHITECTURES`` lists every key of transformers' ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``.
``tiny_config(model_type)`` starts from the config class's defaults and shrinks them (generic
ViT-style keys first, then a per-type override) so that ``from_config`` builds in well under a
second and a CPU forward of a 64×64 image is cheap; ``tiny_model(model_type)`` builds one with
``torch.manual_seed(0)`` and calibrated BatchNorm.

Conventions the tests rely on:

* ``SIZES[model_type]``: the ``(h, w)`` input sizes a plain ``model(**example_inputs(...))``
  accepts (``interpolate_pos_encoding=True`` is passed when ``forward`` takes it, as
  ``xai_recipes`` does). 64×64 first; 64×96 too where the architecture allows other sizes.
* ``UNBUILDABLE[model_type]``: why the architecture cannot be built / run offline here.
* ``NOT_PIXEL_CLASSIFIERS[model_type]``: builds and runs, but is not a plain
  ``pixel_values`` (B×3×H×W) → ``B×num_labels`` image classifier; ``example_inputs`` builds
  its native inputs.

Run ``python tests/tiny_archs.py`` for a self-check table.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import torch
import transformers as T
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import calibrate_batchnorm

from xai_recipes.derive import find_logits

NUM_LABELS = 4
ID2LABEL = {i: f"class {i}" for i in range(NUM_LABELS)}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}

ARCHITECTURES: list[str] = list(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)

SQUARE = [(64, 64)]
ANY = [(64, 64), (64, 96)]

# Applied to every config whose defaults have the key (ViT-style single-resolution encoders).
GENERIC: dict[str, Any] = dict(
    image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, num_channels=3,
)
_VIT_TOWER = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_TEXT_TOWER = dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _per_stage(n: int, **lists: Any) -> dict[str, list]:
    return {k: [v] * n for k, v in lists.items()}


_BACKBONE_KEYS = ("out_features", "out_indices")  # None: re-derive from the shrunk stage names

# Per-type overrides (merged over GENERIC). ``None`` for a key drops a GENERIC value.
OVERRIDES: dict[str, dict[str, Any]] = {
    "beit": dict(drop_path_rate=0.0, layer_scale_init_value=1.0, use_auxiliary_head=False, out_indices=None, out_features=None),
    "data2vec-vision": dict(drop_path_rate=0.0, layer_scale_init_value=1.0, use_auxiliary_head=False, out_indices=[1, 2]),
    "bit": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], num_groups=4, out_features=None, out_indices=None),
    "clip": dict(vision_config=_VIT_TOWER, text_config=_TEXT_TOWER, projection_dim=32),
    "metaclip_2": dict(vision_config=_VIT_TOWER, text_config=_TEXT_TOWER, projection_dim=32),
    "siglip": dict(vision_config=_VIT_TOWER, text_config=_TEXT_TOWER),
    "siglip2": dict(vision_config={**_VIT_TOWER, "num_patches": 64}, text_config=_TEXT_TOWER),
    "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, layer_scale_init_value=1.0, out_features=None, out_indices=None),
    "convnextv2": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, out_features=None, out_indices=None),
    "cvt": dict(
        patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], embed_dim=[16, 32], num_heads=[1, 2],
        depth=[1, 2], cls_token=[False, True],  # depth[i] > i: CvtStage indexes its drop-path list by stage
        **_per_stage(2, mlp_ratio=2.0, attention_drop_rate=0.0, drop_rate=0.0, drop_path_rate=0.0, qkv_bias=True,
                     qkv_projection_method="dw_bn", kernel_qkv=3, padding_kv=1, stride_kv=2, padding_q=1, stride_q=1),
    ),
    "dinat": dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, dilations=[[1], [1]], drop_path_rate=0.0,
                  out_features=None, out_indices=None),
    "dinov2": dict(mlp_ratio=2, out_features=None, out_indices=None),
    "dinov2_with_registers": dict(mlp_ratio=2, out_features=None, out_indices=None),
    "donut-swin": dict(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, drop_path_rate=0.0, hidden_size=None),
    "swin": dict(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, drop_path_rate=0.0, hidden_size=None,
                 out_features=None, out_indices=None),
    "swinv2": dict(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, pretrained_window_sizes=[0, 0],
                   drop_path_rate=0.0, hidden_size=None, out_features=None, out_indices=None),
    "efficientnet": dict(width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, dropout_rate=0.0, drop_connect_rate=0.0,
                         num_hidden_layers=None),
    "focalnet": dict(patch_size=4, embed_dim=16, hidden_sizes=[32, 64], depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3],
                     drop_path_rate=0.0, out_features=None, out_indices=None),
    "hgnet_v2": dict(
        embedding_size=16, depths=[1, 1], hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
        stage_in_channels=[16, 32], stage_mid_channels=[8, 16], stage_out_channels=[32, 64], stage_num_blocks=[1, 1],
        stage_downsample=[False, True], stage_downsample_strides=[2, 2], stage_light_block=[False, True],
        stage_kernel_size=[3, 5], stage_numb_of_layers=[2, 2], out_features=None, out_indices=None,
    ),
    "hiera": dict(image_size=[64, 64], patch_size=[7, 7], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], mlp_ratio=2.0,
                  out_features=None, out_indices=None),
    "imagegpt": dict(n_positions=64, n_embd=32, n_layer=2, n_head=2, vocab_size=17, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "levit": dict(patch_size=16, hidden_sizes=[32, 48], num_attention_heads=[2, 2], depths=[1, 1], key_dim=[8, 8], mlp_ratio=[2, 2],
                  attention_ratio=[2, 2], down_ops=[["Subsample", 8, 32 // 8, 4, 2, 2]]),
    "mobilenet_v1": dict(depth_multiplier=0.25, classifier_dropout_prob=0.0),
    "mobilenet_v2": dict(depth_multiplier=0.25, finegrained_output=False, classifier_dropout_prob=0.0),
    "mobilevit": dict(patch_size=2, neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], hidden_sizes=[16, 24, 32], expand_ratio=2.0,
                      num_attention_heads=2, hidden_dropout_prob=0.0, classifier_dropout_prob=0.0),
    "mobilevitv2": dict(patch_size=2, width_multiplier=0.25, n_attn_blocks=[1, 1, 1], base_attn_unit_dims=[16, 24, 32],
                        classifier_dropout_prob=0.0),
    "perceiver": dict(num_latents=16, d_latents=32, d_model=512, num_self_attends_per_block=1, num_self_attention_heads=2,
                      num_cross_attention_heads=1, attention_probs_dropout_prob=0.0,
                      initializer_range=0.1),  # at 0.02 the logits span ~3e-3: averaging 4096 pixels washes them out
    "poolformer": dict(hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1],
                       mlp_ratio=2.0, layer_scale_init_value=1.0),
    "pp_lcnet": dict(
        scale=1.0, stem_channels=8,
        block_configs=[[[3, 8, 16, 1, False]], [[3, 16, 32, 2, False]], [[3, 32, 32, 2, False]], [[5, 32, 64, 2, False]],
                       [[5, 64, 64, 2, True]]],
        depths=[1, 1, 1, 1, 1], class_expand=64, hidden_dropout_prob=0.0, out_features=None, out_indices=None,
    ),
    "pvt": dict(num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[4, 2],
                strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    "pvt_v2": dict(image_size=[64, 64], num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                   patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], out_features=None, out_indices=None),
    "segformer": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                      num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, drop_path_rate=0.0,
                      classifier_dropout_prob=0.0),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", out_features=None, out_indices=None),
    "swiftformer": dict(depths=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32], mlp_ratio=2, layer_scale_init_value=1.0),
    "textnet": dict(
        stem_out_channels=16, hidden_sizes=[16, 16, 32, 32, 64], depths=[1, 1, 1, 1],
        conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]], [[3, 3]], [[3, 3]]], conv_layer_strides=[[1], [2], [2], [2]],
        image_size=[64, 64], out_features=None, out_indices=None,
    ),
    "timm_wrapper": dict(architecture="test_efficientnet"),
    "shieldgemma2": dict(
        mm_tokens_per_image=16, boi_token_index=250, eoi_token_index=251, image_token_index=252,
        vision_config=dict(_VIT_TOWER, patch_size=4),  # 16×16 patches, pooled to mm_tokens_per_image=16
        text_config=dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                         layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128),
        yes_token_index=10, no_token_index=11,
    ),
}

# Input sizes (h, w) a forward accepts; 64×64 first.
SIZES: dict[str, list[tuple[int, int]]] = {mt: ANY for mt in ARCHITECTURES}
SIZES.update({
    "levit": SQUARE,  # attention biases are sized for the configured resolution (no interpolation)
    "pvt": SQUARE,  # PvtPatchEmbeddings.interpolate_pos_encoding reshapes the stored table with the new grid: only image_size works
    "shieldgemma2": SQUARE,  # the projector pools the patch grid to exactly mm_tokens_per_image tokens
})
# hiera: any multiple of 32 (patch stride 4 × masked unit 8); perceiver / ViTs / CLIPs interpolate position tables.

UNBUILDABLE: dict[str, str] = {
    "dinat": "DinatForImageClassification needs the `natten` neighbourhood-attention kernels (requires_backends in "
             "__init__); natten is not installed, and current natten releases (>=0.20) no longer ship the "
             "natten2dqkrpb/natten2dav functions transformers' Dinat calls",
}
NOT_PIXEL_CLASSIFIERS: dict[str, str] = {
    "imagegpt": "takes colour-cluster token ids (input_ids), not pixel_values; example_inputs quantises the image "
                "to vocab_size-1 random colour clusters",
    "shieldgemma2": "a Gemma3 vision-language model: needs a token prompt (input_ids with image tokens) as well as "
                    "pixel_values, and returns yes/no logits (B×2) whatever num_labels is",
}


def tiny_config(model_type: str) -> T.PretrainedConfig:
    """The config class's defaults for ``model_type``, shrunk, with 4 labels ``class 0..3``."""
    cls = CONFIG_MAPPING[model_type]
    defaults = cls().to_dict()
    kwargs = {k: v for k, v in GENERIC.items() if k in defaults}
    for k, v in OVERRIDES.get(model_type, {}).items():
        if v is None and k not in _BACKBONE_KEYS:
            kwargs.pop(k, None)
        else:
            kwargs[k] = v
    if model_type == "timm_wrapper":
        kwargs["num_classes"] = NUM_LABELS
    config = cls(**kwargs, num_labels=NUM_LABELS, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    # Auto classes pick among several heads (deit, levit, perceiver) by config.architectures and
    # fail on None: name the mapping's first (default) head.
    config.architectures = [model_class(model_type).__name__]
    return config


def model_class(model_type: str) -> type:
    name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    return getattr(T, name[0] if isinstance(name, tuple) else name)


# Heads whose forward passes **kwargs on to a vision tower that interpolates position embeddings.
INTERPOLATE_VIA_KWARGS = {"clip", "metaclip_2"}


def forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """``interpolate_pos_encoding=True`` where the model can take it (so ViTs accept any size)."""
    takes = inspect.signature(model.forward).parameters
    if "interpolate_pos_encoding" in takes or model.config.model_type in INTERPOLATE_VIA_KWARGS:
        return {"interpolate_pos_encoding": True}
    return {}


def example_inputs(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments for ``model(**...)`` from a B×3×H×W image batch."""
    mt = model.config.model_type
    if mt == "siglip2":
        p = model.config.vision_config.patch_size
        b, c, h, w = pixel_values.shape
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return dict(pixel_values=patches, spatial_shapes=torch.tensor([[h // p, w // p]] * b),
                    pixel_attention_mask=torch.ones(b, patches.shape[1], dtype=torch.long))
    if mt == "imagegpt":
        g = torch.Generator().manual_seed(0)
        clusters = torch.rand(model.config.vocab_size - 1, 3, generator=g) * 2 - 1
        small = torch.nn.functional.interpolate(pixel_values, size=(8, 8), mode="area")  # n_positions=64 tokens
        flat = small.flatten(2).transpose(1, 2)  # B×64×3
        ids = torch.cdist(flat, clusters.expand(flat.shape[0], -1, -1)).argmin(-1)
        return dict(input_ids=ids)
    if mt == "shieldgemma2":
        cfg = model.config
        b = pixel_values.shape[0]
        prompt = [2, cfg.boi_token_index] + [cfg.image_token_index] * cfg.mm_tokens_per_image + [cfg.eoi_token_index, 20, 21, 22]
        ids = torch.tensor([prompt] * b)
        return dict(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids))
    return dict(pixel_values=pixel_values, **forward_kwargs(model))


def tiny_model(model_type: str) -> torch.nn.Module:
    """Random-init model from ``tiny_config`` (seed 0), BatchNorm calibrated, in eval mode."""
    from transformers import AutoModelForImageClassification

    if model_type in UNBUILDABLE:
        raise RuntimeError(f"{model_type}: {UNBUILDABLE[model_type]}")
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(tiny_config(model_type)).eval()
    if model_type == "shieldgemma2":
        # Gemma3's projector starts at exactly zero, so the image never reaches the logits: give it weights.
        torch.nn.init.normal_(model.model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    if model_type in NOT_PIXEL_CLASSIFIERS:
        return model
    return calibrate_batchnorm(model)


if __name__ == "__main__":
    import os
    import time
    import traceback

    from transformers import AutoModelForImageClassification

    # Tiny tensors: OpenMP threads only add contention (a loaded 2-core box makes 2 threads ~10× slower).
    torch.set_num_threads(int(os.environ.get("TINY_THREADS", "1")))
    only = sys.argv[1:] or ARCHITECTURES
    start = time.perf_counter()
    failed = []
    spent = 0.0  # tiny_model + forwards, summed (the bare from_config timing is extra)
    print(f"{'model_type':22s} {'class':42s} {'params':>8s} {'sizes':21s} {'build':>6s} {'tiny_m':>6s} {'fwd':>6s} "
          f"{'total':>6s} {'logit std':>9s} {'Δinput':>8s}")
    for mt in only:
        if mt in UNBUILDABLE:
            print(f"{mt:22s} UNBUILDABLE: {UNBUILDABLE[mt]}")
            continue
        try:
            t0 = time.perf_counter()
            config = tiny_config(mt)
            torch.manual_seed(0)
            AutoModelForImageClassification.from_config(config)
            t1 = time.perf_counter()
            model = tiny_model(mt)  # built again: build + BatchNorm calibration (+ any re-init)
            t2 = time.perf_counter()
            n = sum(p.numel() for p in model.parameters())
            g = torch.Generator().manual_seed(1)
            stds, deltas = [], []
            for h, w in SIZES[mt]:
                x = torch.randn(2, 3, h, w, generator=g)
                with torch.no_grad():
                    a = find_logits(model(**example_inputs(model, x[:1])))  # PP-LCNet's: last_hidden_state
                    b = find_logits(model(**example_inputs(model, x[1:])))
                expected = (1, 2) if mt == "shieldgemma2" else (1, NUM_LABELS)
                assert tuple(a.shape) == expected, f"{(h, w)}: logits {tuple(a.shape)}"
                assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{(h, w)}: non-finite logits"
                assert a.std() > 1e-6 * (1 + a.abs().max()), f"{(h, w)}: constant logits {a}"
                assert not torch.equal(a, b), f"{(h, w)}: logits ignore the image"
                stds.append(a.std().item())
                deltas.append((a - b).abs().max().item())
            t3 = time.perf_counter()
            spent += t3 - t1
            sizes = ",".join(f"{h}x{w}" for h, w in SIZES[mt])
            print(f"{mt:22s} {type(model).__name__:42s} {n:8d} {sizes:21s} {t1 - t0:6.2f} {t2 - t1:6.2f} "
                  f"{(t3 - t2) / (2 * len(SIZES[mt])):6.3f} {t3 - t1:6.2f} {min(stds):9.2e} {min(deltas):8.1e}")
        except Exception as e:  # noqa: BLE001
            failed.append(mt)
            print(f"{mt:22s} FAILED {type(e).__name__}: {str(e)[:300]}")
            if len(only) == 1:
                traceback.print_exc()
    print(f"tiny_model + forwards: {spent:.2f}s; wall {time.perf_counter() - start:.2f}s for {len(only)} architectures "
          f"({torch.get_num_threads()} thread(s)); failed: {failed}")
    sys.exit(1 if failed else 0)


# --- zero-shot image classification (dual encoders explained by text prompts) -------------------

from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES  # noqa: E402

ZERO_SHOT_ARCHITECTURES: list[str] = list(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES)

# Text towers: ids 0 pad, 1 start, 3 end, 4.. characters (CharTokenizer). Not 2 for the end: CLIP-family text
# towers then pool at argmax(ids) (the legacy rule), a character of the shared template, not the end token.
_ZS_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=3)
_ZS_TEXT = dict(_TEXT_TOWER, **_ZS_IDS)
_ZS_BERT = dict(_ZS_TEXT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

ZERO_SHOT_OVERRIDES: dict[str, dict[str, Any]] = {
    "align": dict(vision_config=dict(image_size=64, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
                                     drop_connect_rate=0.0), text_config=_ZS_BERT, projection_dim=32),
    "altclip": dict(vision_config=_VIT_TOWER, text_config=dict(_ZS_BERT, project_dim=32), projection_dim=32),
    # BLIP's vision initializer_range defaults to 1e-10: the image would barely move the scores
    "blip": dict(vision_config=dict(_VIT_TOWER, initializer_range=0.02), text_config=dict(_ZS_BERT, encoder_hidden_size=32),
                 projection_dim=32, image_text_hidden_size=32),
    "blip-2": dict(vision_config=dict(_VIT_TOWER, initializer_range=0.02), num_query_tokens=4, image_text_hidden_size=16,
                   qformer_config=dict(_ZS_BERT, encoder_hidden_size=32, cross_attention_frequency=1),
                   text_config=dict(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                    word_embed_proj_dim=32, **_ZS_IDS)),
    "chinese_clip": dict(vision_config=_VIT_TOWER, text_config=_ZS_BERT, projection_dim=32),
    "clip": dict(vision_config=_VIT_TOWER, text_config=_ZS_TEXT, projection_dim=32),
    "clipseg": dict(vision_config=_VIT_TOWER, text_config=_ZS_TEXT, projection_dim=32, extract_layers=[1],
                    reduce_dim=16),
    "metaclip_2": dict(vision_config=_VIT_TOWER, text_config=_ZS_TEXT, projection_dim=32),
    "siglip": dict(vision_config=_VIT_TOWER, text_config=_ZS_TEXT),
    "siglip2": dict(vision_config={**_VIT_TOWER, "num_patches": 64}, text_config=_ZS_TEXT),
    "tipsv2": dict(vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=64,
                                      patch_size=8, out_features=None, out_indices=None, stage_names=None),
                   text_config=_ZS_TEXT),
    "videoprism": dict(vision_config=dict(image_size=64, num_frames=1, tubelet_size=[1, 8, 8], hidden_size=32,
                                          num_attention_heads=2, intermediate_size=64, num_spatial_layers=1,
                                          num_temporal_layers=1, num_auxiliary_layers=1),
                       text_config=_ZS_TEXT),
}

# Input sizes (h, w) explained; 64×64 first, 64×96 where the model takes other sizes.
ZERO_SHOT_SIZES: dict[str, list[tuple[int, int]]] = {mt: ANY for mt in ZERO_SHOT_ARCHITECTURES}
ZERO_SHOT_UNBUILDABLE: dict[str, str] = {}


def zero_shot_config(model_type: str) -> T.PretrainedConfig:
    """The config class's defaults for ``model_type`` with shrunk towers (``ZERO_SHOT_OVERRIDES``)."""
    cls = CONFIG_MAPPING[model_type]
    kwargs = {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
              for k, v in ZERO_SHOT_OVERRIDES.get(model_type, {}).items()}
    config = cls(**kwargs)
    config.architectures = [zero_shot_class(model_type).__name__]
    return config


def zero_shot_class(model_type: str) -> type:
    name = MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    return getattr(T, name[0] if isinstance(name, tuple) else name)


def tiny_zero_shot_model(model_type: str) -> torch.nn.Module:
    """Random-init zero-shot model from ``zero_shot_config`` (seed 0), BatchNorm calibrated, in eval mode."""
    from transformers import AutoModelForZeroShotImageClassification

    if model_type in ZERO_SHOT_UNBUILDABLE:
        raise RuntimeError(f"{model_type}: {ZERO_SHOT_UNBUILDABLE[model_type]}")
    torch.manual_seed(0)
    model = AutoModelForZeroShotImageClassification.from_config(zero_shot_config(model_type)).eval()
    calibrate_batchnorm(getattr(model, "vision_model", model))  # the image tower alone runs on pixel_values
    return model.eval()


class CharTokenizer:
    """An offline character-level tokenizer: ``[1] + (4 + ord(c) mod (vocab - 4)) ... + [3]``, padded with 0.

    Called as ``zero_shot.text_inputs`` calls a transformers tokenizer (``truncation=False`` to
    measure, then ``return_tensors="pt"`` with ``padding`` and ``max_length``)."""

    model_input_names = ["input_ids", "attention_mask"]
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 3

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [self.bos_token_id] + [4 + ord(c) % (self.vocab_size - 4) for c in text] + [self.eos_token_id]

    def __call__(self, texts, return_tensors=None, padding=False, truncation=False, max_length=None, **_: Any):
        ids = [self.encode(t) for t in ([texts] if isinstance(texts, str) else texts)]
        if truncation and max_length:
            ids = [x[: max_length - 1] + [self.eos_token_id] if len(x) > max_length else x for x in ids]
        if padding in (True, "longest", "max_length"):
            width = max_length if padding == "max_length" and max_length else max(map(len, ids))
            ids = [x + [self.pad_token_id] * (width - len(x)) for x in ids]
        mask = [[int(i != self.pad_token_id) for i in x] for x in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        return {"input_ids": ids, "attention_mask": mask}


class TextImageProcessor:
    """An image processor and a tokenizer in one object, as ``AutoProcessor`` gives for a dual encoder."""

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, images=None, return_tensors="pt", **kwargs: Any):
        return self.image_processor(images=images, return_tensors=return_tensors, **kwargs)

    def to_json_string(self) -> str:
        return self.image_processor.to_json_string()


def zero_shot_processor(model: torch.nn.Module, height: int, width: int) -> TextImageProcessor:
    """A ``height×width`` ViT image processor with a :class:`CharTokenizer` within ``model``'s text vocabulary."""
    from transformers import ViTImageProcessor

    config = model.config
    text = getattr(config, "text_config", None)
    vocab = getattr(text, "vocab_size", None) or getattr(getattr(config, "qformer_config", None), "vocab_size", 128)
    return TextImageProcessor(ViTImageProcessor(size={"height": height, "width": width}), CharTokenizer(vocab))
