"""Tiny, fully local stand-ins for the real model: a small random config, a small XLM-R-style Unigram
tokenizer trained on the repository's multilingual demo captions, and the processor around both.

Shapes are small but keep every structural feature of the real model (several heads, RoPE, SwiGLU with
an intermediate width that is not a multiple of the hidden size, image sizes other than 224).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# `modeling` (and with it transformers) is imported inside the functions that need it: the timm oracle
# subprocesses import this file only for `import_timm` and should not pay for importing transformers.

CAPTIONS = ROOT / "data" / "tuxpaint" / "captions.jsonl"


def tiny_config(image_size: int = 56, vocab_size: int = 1000, **overrides) -> JinaCLIPConfig:
    from jina_clip_v2.modeling import JinaCLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=85,  # int(32 * 2.6667), as the real 2730 = int(1024 * 2.6667)
        image_size=image_size,
        patch_size=14,
        patch_dropout=0.0,
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    kwargs = dict(text_config=text, vision_config=vision, projection_dim=32, matryoshka_dimensions=[8, 16, 32])
    kwargs.update(overrides)
    return JinaCLIPConfig(**kwargs)


def tiny_model(seed: int = 0, **config_overrides) -> JinaCLIPModel:
    from jina_clip_v2.modeling import JinaCLIPModel

    torch.manual_seed(seed)
    model = JinaCLIPModel(tiny_config(**config_overrides)).eval()
    # Fresh init leaves q/v biases, LayerNorms and cls/pos at trivial values; randomise every parameter so
    # a wrong wiring (swapped gates, missing bias, wrong eps) cannot hide behind zeros and ones.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def caption_corpus() -> list[str]:
    with open(CAPTIONS, encoding="utf-8") as handle:
        return [text for line in handle for text in json.loads(line)["captions"].values()]


def build_tokenizer(vocab_size: int = 1000):
    """An XLM-R-layout tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3, Unigram) trained on the demo captions."""
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import XLMRobertaTokenizerFast

    # Unigram training needs every character of its corpus in the vocabulary, and the captions hold ~3000
    # distinct characters (77 languages): train on a spread-out sample (a few seconds -> under one) reduced
    # to its most frequent characters; the rest encode as <unk>, as unseen characters do in any vocabulary.
    corpus = caption_corpus()[::16]
    alphabet = {char for char, _ in Counter("".join(corpus)).most_common(vocab_size * 2 // 5)}
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(
        ["".join(char for char in text if char in alphabet) for text in corpus],
        vocab_size=vocab_size - 1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    unigram.add_special_tokens(["<mask>"])
    unigram.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=unigram._tokenizer, model_max_length=512)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    return tokenizer


def build_processor(tokenizer, image_size: int = 56):
    from transformers import CLIPProcessor

    from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor

    image_processor = JinaCLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def import_timm():
    """timm, the independent EVA02 oracle (benchmarks/timm_oracle.py explains the CPU-only setup); the test
    is skipped where it is not installed."""
    from jina_clip_v2.benchmarks.timm_oracle import import_timm as _import_timm

    try:
        return _import_timm()
    except ImportError as err:
        import pytest

        pytest.skip(str(err))


# Prepended to scripts that must run as on a machine without this repository: an editable install
# (`make setup` does `pip install -e .`) makes our packages importable even under `python -I`, so a
# meta-path finder refuses them; the copied Hub remote code loads as `transformers_modules.*` and is unaffected.
BLOCK_REPO_IMPORTS = '''
import sys as _sys
class _NoRepository:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"jina_clip_v2", "modeling", "hub", "training", "evaluation", "benchmarks"}:
            raise ModuleNotFoundError(f"{name}: this process simulates a machine without the repository")
        return None
_sys.meta_path.insert(0, _NoRepository())
'''
