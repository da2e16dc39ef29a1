"""Tiny, fully local stand-ins for jina-clip-v1: a small random config (JinaBERT text tower + EVA02-B/16
vision tower) and a small BERT WordPiece tokenizer trained on the demo data's English captions.

The real jina-clip-v1 tokenizer (BERT uncased WordPiece, 30522 tokens: [PAD]=0, [unused0..98]=1..99,
[UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103) is not reachable offline; the tiny one keeps its layout: the
same special ids, lower-casing, BERT pre-tokenization, "[CLS] text [SEP]".

Shapes keep the structural features of the release: a head count that is not a power of two (ALiBi's
interleaved slopes; the release has 12), a gated MLP, patch 16 with a patch grid other than the 16x16 RoPE
reference grid (224 px / 16 = 14 in the release).
"""

from __future__ import annotations

import json

import torch

from _tiny import CAPTIONS

V1_SPECIAL_TOKENS = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_v1_config(image_size: int = 64, vocab_size: int = 600, **overrides):
    from jina_clip_v2.modeling import JinaCLIPConfig

    text = dict(
        model_type="jina_bert",
        vocab_size=vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=6,  # not a power of two, as the release's 12
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    vision = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,  # int(48 * 2.6667), as the release's 2048 = int(768 * 2.6667)
        image_size=image_size,
        patch_size=16,
        patch_dropout=0.0,
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return JinaCLIPConfig(text_config=text, vision_config=vision, **overrides)


def tiny_v1_model(seed: int = 0, **config_overrides):
    from jina_clip_v2.modeling import JinaCLIPModel

    torch.manual_seed(seed)
    model = JinaCLIPModel(tiny_v1_config(**config_overrides)).eval()
    # Randomise every parameter (LayerNorms, biases, pad row included): a wrong wiring cannot hide.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def english_captions() -> list[str]:
    with open(CAPTIONS, encoding="utf-8") as handle:
        return [json.loads(line)["captions"]["en"] for line in handle]


def build_bert_tokenizer(vocab_size: int = 600, model_max_length: int = 8192):
    """A BERT-layout uncased WordPiece tokenizer ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102) trained with the
    `tokenizers` library on the demo data's English captions, as a `BertTokenizerFast`."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        english_captions(), vocab_size=vocab_size, special_tokens=V1_SPECIAL_TOKENS, show_progress=False
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, model_max_length=model_max_length)
    tokenizer.add_special_tokens(
        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    )
    ids = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert ids == (0, 100, 101, 102), ids
    assert len(tokenizer) <= vocab_size
    return tokenizer
