"""Random tiny CLIP and SigLIP models with offline tokenizers, for the reference tests.

The tokenizers are trained here in milliseconds: a BPE (``tokenizers``, ``</w>`` word ends, CLIP's
start and end tokens) wrapped in ``CLIPTokenizerFast``, and a sentencepiece unigram model wrapped in
``SiglipTokenizer`` — what the transformers pipeline needs to run offline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import transformers as T

WORDS = ("a photo of the digit zero one two three four five six seven eight nine dog cat on sofa red car "
         "this is and").split()
CAPTIONS = [f"This is a photo of {a} {b}." for a in WORDS for b in WORDS]


def clip_tokenizer() -> T.CLIPTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(CAPTIONS, trainers.BpeTrainer(vocab_size=120, end_of_word_suffix="</w>",
                                                          special_tokens=["<|startoftext|>", "<|endoftext|>"]))
    bpe.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bpe.token_to_id("<|startoftext|>")),
                        ("<|endoftext|>", bpe.token_to_id("<|endoftext|>"))])
    return T.CLIPTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=16)


def siglip_tokenizer() -> T.SiglipTokenizer:
    import sentencepiece as spm

    folder = Path(tempfile.mkdtemp(prefix="siglip-spm-"))
    (folder / "captions.txt").write_text("\n".join(CAPTIONS))
    spm.SentencePieceTrainer.train(input=str(folder / "captions.txt"), model_prefix=str(folder / "spm"), vocab_size=60, hard_vocab_limit=False,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    return T.SiglipTokenizer(vocab_file=str(folder / "spm.model"), model_max_length=64)


def _text_config(vocab: int, positions: int, **ids) -> dict:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=vocab,
                max_position_embeddings=positions, **ids)


VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8)


def random_clip(dtype=torch.float64) -> tuple[T.CLIPModel, T.CLIPTokenizerFast, T.CLIPImageProcessor]:
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    config = T.CLIPConfig(text_config=_text_config(len(tokenizer), 16, bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
                          vision_config=VISION, projection_dim=16, logit_scale_init_value=2.0)
    model = T.CLIPModel(config).to(dtype).eval()
    processor = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tokenizer, processor


def random_siglip(dtype=torch.float64) -> tuple[T.SiglipModel, T.SiglipTokenizer, T.SiglipImageProcessor]:
    torch.manual_seed(0)
    tokenizer = siglip_tokenizer()
    config = T.SiglipConfig(text_config=_text_config(tokenizer.vocab_size, 64, pad_token_id=0, eos_token_id=1),
                            vision_config=VISION)
    model = T.SiglipModel(config).to(dtype).eval()
    processor = T.SiglipImageProcessor(size={"height": 32, "width": 32})
    return model, tokenizer, processor


def as_processor(tokenizer, image_processor):
    """A CLIPProcessor / SiglipProcessor holding both (what AutoProcessor loads from a hub folder)."""
    kind = T.CLIPProcessor if isinstance(tokenizer, T.CLIPTokenizerFast) else T.SiglipProcessor
    return kind(image_processor=image_processor, tokenizer=tokenizer)
