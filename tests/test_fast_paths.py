"""Fast paths change no output: unpadded text batches, token-budget batching, torch.compile, dtype default."""

import numpy as np
import pytest
import torch

from _tiny import tiny_model
from jina_clip_v2.modeling.encoding_jina_clip import text_batches

TEXTS = [
    "Ein Hund.",
    "A very long caption about a red bicycle leaning against a wall in the evening sun, with shadows.",
    "Un chat",
    "猫",
    "Une voiture rouge garée devant une maison blanche.",
]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_unpadded_text_equals_padded(model, attn):
    model.set_attn_implementation(attn)
    batch = model.processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding for this test to mean anything"
    with torch.no_grad():
        padded = model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=False).pooler_output
        packed = model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=True).pooler_output
    assert (padded - packed).abs().max().item() <= 1e-5
    model.set_attn_implementation("sdpa")


def test_unpadded_is_not_a_no_op(model):
    # Guard against a packed path that attends across texts: without the block mask results must differ.
    batch = model.processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        cross = model.text_model(input_ids=batch["input_ids"][keep][None]).last_hidden_state[0]
        packed = model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=True).pooler_output
    lengths = keep.sum(1).tolist()
    first = cross[: lengths[0]].mean(0)
    assert (first - packed[0]).abs().max().item() > 1e-4


def test_unpadded_rejects_empty_rows(model):
    ids = torch.tensor([[0, 5, 2], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"text\(s\) \[1\] have no token"):
        model.get_text_features(ids, (ids != 1).long(), unpadded=True)


def test_token_budget_batching_changes_nothing(model):
    reference = model.encode_text(TEXTS, batch_size=2)
    budgeted = model.encode_text(TEXTS, batch_size=4, max_tokens_per_batch=40)
    np.testing.assert_allclose(budgeted, reference, atol=1e-5, rtol=0)
    lengths = [len(ids) for ids in model.processor.tokenizer(TEXTS)["input_ids"]]
    for unpadded in (False, True):
        batches = text_batches(lengths, 4, 40, unpadded)
        assert sorted(i for b in batches for i in b) == list(range(len(TEXTS)))
        for batch in batches:
            assert len(batch) <= 4
            tokens = sum(lengths[i] for i in batch) if unpadded else len(batch) * max(lengths[i] for i in batch)
            assert len(batch) == 1 or tokens <= 40
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        model.encode_text(TEXTS, max_tokens_per_batch=0)


def test_compiled_towers_equal_eager(model):
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    batch = model.processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**batch).pooler_output
        image = model.get_image_features(pixels).pooler_output
    compiled = tiny_model()
    compiled.load_state_dict(model.state_dict())
    compiled.compile_towers(backend="eager", dynamic=True)
    with torch.no_grad():
        assert (compiled.get_text_features(**batch).pooler_output - text).abs().max().item() <= 1e-5
        assert (compiled.get_image_features(pixels).pooler_output - image).abs().max().item() <= 1e-5


def test_default_dtype_is_fp32_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on CUDA machines the default is bf16")
    model = tiny_model(seed=1).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert next(reloaded.parameters()).dtype == torch.float32
    assert next(type(model).from_pretrained(tmp_path, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
