"""encode_text / encode_image take the fast exact path by default (issue 16): token-budget batches by token count
with one tokenization, packed where the backend supports it, the input order kept, outputs equal to encoding each
text alone; images decoded in a bounded pool of workers, bit-identical to the serial path, streaming any iterable in
bounded memory; no per-call eval() sweep; the processor loaded with the model; no (T, T) mask on the packed path.
Instrumentation (call counts, live objects), never timing."""

from __future__ import annotations

import gc
import itertools
import random
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _tiny import ROOT, build_processor, tiny_model
from jina_clip_v2.modeling import JinaCLIPModel
from jina_clip_v2.modeling import encoding_jina_clip as E

IMAGES = sorted((ROOT / "data" / "tuxpaint" / "images").iterdir())


def long_tailed_texts(tokenizer, count: int = 60, seed: int = 0) -> list[str]:
    """Shuffled texts of 3..~200 tokens, most of them short (a long tail), from the demo captions."""
    from _tiny import caption_corpus

    rng = random.Random(seed)
    words = " ".join(caption_corpus()[::7]).split()
    texts = []
    for _ in range(count):
        n = min(int(rng.lognormvariate(1.0, 1.2)) + 1, 60)
        start = rng.randrange(0, len(words) - n)
        texts.append(" ".join(words[start : start + n]))
    rng.shuffle(texts)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert max(lengths) > 5 * np.median(lengths), "the batch must be long-tailed for the test to mean anything"
    return texts


def reference_one_by_one(model, tokenizer, texts) -> np.ndarray:
    """Each text alone (no padding at all), the padded path, normalised: what every batching must reproduce."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer([text], truncation=True, max_length=512, return_tensors="pt")
            out = model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"], unpadded=False)
            rows.append(F.normalize(out.pooler_output.float(), dim=-1))
    return torch.cat(rows).numpy()


def record(obj, name: str):
    """Wrap obj.<name> on the instance; returns the list of (args, kwargs) of its calls."""
    calls = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


# ----------------------------------------------------------------------------------------------------
# encode_text
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_default_encode_text_equals_each_text_alone(model, tokenizer, attn, monkeypatch):
    texts = long_tailed_texts(tokenizer)
    model.set_attn_implementation(attn)
    try:
        reference = reference_one_by_one(model, tokenizer, texts)
        calls = record(model, "get_text_features")
        tokenizations = []
        original_call = type(tokenizer).__call__

        def counting_call(self, *args, **kwargs):
            tokenizations.append(args[0] if args else kwargs.get("text"))
            return original_call(self, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), "__call__", counting_call)
        got = model.encode_text(texts)
        monkeypatch.undo()
        del model.get_text_features
    finally:
        model.set_attn_implementation("sdpa")
    # The input order, and the embeddings of each text encoded alone.
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=1e-6, rtol=0)
    # Tokenized once (all texts in one call), packed on CPU, batches of at most 32 (batch_size) texts.
    assert len(tokenizations) == 1 and list(tokenizations[0]) == texts
    assert calls and all(kwargs.get("unpadded") is True for _, kwargs in calls)
    assert sum(len(args[0]) for args, _ in calls) == len(texts)
    assert all(len(args[0]) <= 32 for args, _ in calls)
    # The batches go longest first: the first batch holds the longest texts.
    lengths = sorted((len(ids) for ids in tokenizer(texts)["input_ids"]), reverse=True)
    first = calls[0][1]["attention_mask"].sum(1).tolist()
    assert first == lengths[: len(first)]


def test_encode_text_tokenizes_per_chunk_in_bounded_memory(model, tokenizer, monkeypatch):
    """Issue 25: texts are tokenized TEXTS_PER_CHUNK at a time (memory flat as the input grows), each chunk sorted
    into its own batches; the outputs keep the input order and equal one chunk's."""
    texts = long_tailed_texts(tokenizer)
    whole = model.encode_text(texts)
    monkeypatch.setattr(E, "TEXTS_PER_CHUNK", 7)
    tokenizations = []
    original_call = type(tokenizer).__call__

    def counting_call(self, *args, **kwargs):
        tokenizations.append(list(args[0] if args else kwargs.get("text")))
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting_call)
    calls = record(model, "get_text_features")
    chunked = model.encode_text(texts)
    del model.get_text_features
    assert [len(t) for t in tokenizations] == [7] * (len(texts) // 7) + ([len(texts) % 7] if len(texts) % 7 else [])
    assert sum(tokenizations, []) == texts
    assert all(len(args[0]) <= 7 for args, _ in calls)  # a batch never spans two chunks
    np.testing.assert_allclose(chunked, whole, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="text 9 is not valid Unicode"):  # indices count from the first text
        model.encode_text(texts[:9] + ["bad \ud800"])


def test_batched_text_features_is_encode_texts_runtime(model, tokenizer):
    """What the Sentence-Transformers module calls on a tokenized batch: encode_text's batching (unpadded on CPU),
    the raw embeddings in the batch's order, differentiable."""
    texts = long_tailed_texts(tokenizer, count=20)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    calls = record(model, "get_text_features")
    got = E.batched_text_features(model, batch["input_ids"], batch["attention_mask"], max_tokens_per_batch=64)
    del model.get_text_features
    assert len(calls) > 1 and all(kwargs.get("unpadded") is True for _, kwargs in calls)
    expected = torch.from_numpy(model.encode_text(texts, normalize_embeddings=False))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    model.text_model.embeddings.word_embeddings.weight.requires_grad_(True)
    loss = E.batched_text_features(model, batch["input_ids"], batch["attention_mask"]).sum()
    loss.backward()
    assert model.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_budget_and_batch_size_cap_the_batches(model, tokenizer):
    texts = long_tailed_texts(tokenizer, seed=1)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    calls = record(model, "get_text_features")
    try:
        budgeted = model.encode_text(texts, max_tokens_per_batch=100, batch_size=8)
    finally:
        del model.get_text_features
    reference = model.encode_text(texts)
    np.testing.assert_allclose(budgeted, reference, atol=1e-6, rtol=0)
    for args, kwargs in calls:
        real = int(kwargs["attention_mask"].sum())
        assert len(args[0]) <= 8
        assert len(args[0]) == 1 or real <= 100  # packed batches count real tokens
    assert max(lengths) > 100 and any(len(args[0]) == 1 for args, _ in calls)  # a text above the budget goes alone


def test_text_batch_plan_is_by_token_count(model):
    lengths = [5, 300, 7, 7, 120, 5, 60]
    batches, unpadded = E.text_batch_plan(model, lengths, batch_size=3, max_tokens_per_batch=10_000, device="cpu")
    assert unpadded  # CPU + SDPA: packed
    assert batches == [[1, 4, 6], [2, 3, 0], [5]]  # longest first, ties in input order, at most 3 texts
    padded = E.text_batches(lengths, 32, 400, unpadded=False)
    assert all(len(b) * lengths[b[0]] <= 400 or len(b) == 1 for b in padded)
    with pytest.raises(ValueError, match="batch_size"):
        E.text_batch_plan(model, lengths, batch_size=0)
    # Padded on CUDA without FlashAttention, and for compiled towers (a packed layout would be a new graph each time).
    assert E.text_batch_plan(model, lengths, device="cuda")[1] is False
    compiled = tiny_model(seed=1).compile_towers(backend="eager")
    assert E.text_batch_plan(compiled, lengths, device="cpu")[1] is False


def test_padding_options_change_nothing(model, tokenizer):
    texts = long_tailed_texts(tokenizer, count=12, seed=2)
    reference = model.encode_text(texts)
    np.testing.assert_allclose(model.encode_text(texts, padding="max_length", max_length=200), reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.encode_text(texts, pad_to_multiple_of=64), reference, atol=1e-6, rtol=0)


def test_empty_text_without_special_tokens_is_refused(model):
    # add_special_tokens=False on "" gives no token at all: a zero vector would be a silent wrong result
    # (issue 13), so it is an error naming the text; the same texts with the special tokens embed.
    import pytest

    with pytest.raises(ValueError, match=r"text\(s\) \[0\] give no token"):
        model.encode_text(["", "a frog"], add_special_tokens=False)
    out = model.encode_text(["", "a frog"], normalize_embeddings=False)
    assert np.abs(out[0]).sum() > 0 and np.abs(out[1]).sum() > 0


def test_no_eval_sweep_unless_training(model):
    evals, trains = record(model, "eval"), record(model, "train")
    try:
        model.encode_text(["a frog", "un chat"])
        model.encode_image(Image.open(IMAGES[0]))
        assert evals == [] and trains == []
        model.training = True  # only the flag: the submodules stay in eval mode
        model.encode_text("a frog")
        assert len(evals) == 1 and trains[-1] == ((), {}) and model.training  # eval() itself calls train(False)
    finally:
        del model.eval, model.train
        model.eval()


# ----------------------------------------------------------------------------------------------------
# The unpadded path without FlashAttention: length buckets, no (T, T) mask
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_unpadded_path_builds_no_quadratic_mask(model, tokenizer, attn, monkeypatch):
    texts = long_tailed_texts(tokenizer)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    total, longest = int(lengths.sum()), int(lengths.max())
    model.set_attn_implementation(attn)
    matmul_shapes = []
    original_matmul = torch.matmul
    sdpa_shapes = []
    original_sdpa = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kwargs):
        sdpa_shapes.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return original_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    def matmul(a, b, *args, **kwargs):
        out = original_matmul(a, b, *args, **kwargs)
        matmul_shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(torch, "matmul", matmul)
    try:
        with torch.inference_mode():
            packed = model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=True)
    finally:
        monkeypatch.undo()
        model.set_attn_implementation("sdpa")
    # The text tower's setting was read, never switched: it is what the caller set, during the call too.
    assert model.config.text_config._attn_implementation == "sdpa"
    # Every attention block (and mask) is at most the longest text, never the packed batch's T tokens.
    blocks = [s[0][-2] for s in sdpa_shapes] + [s[-1] for s in matmul_shapes if len(s) == 4]
    masks = [m[-1] for _, m in sdpa_shapes if m is not None]
    assert blocks and max(blocks + masks) <= longest < total
    assert packed.last_hidden_state.shape[:2] == (1, total)  # the real tokens in one row
    with torch.inference_mode():
        padded = model.get_text_features(batch["input_ids"], batch["attention_mask"], unpadded=False).pooler_output
    assert (packed.pooler_output - padded).abs().max().item() <= 1e-5


def test_length_buckets_bound_the_padding():
    lengths = [300, 290, 280, 100, 99, 98, 97, 12, 12, 12, 5]
    buckets = E.length_buckets(lengths, padding=0.125)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        real = sum(lengths[i] for i in bucket)
        assert len(bucket) * max(lengths[i] for i in bucket) <= 1.125 * real
    assert E.length_buckets([7, 7, 7], padding=0.0) == [[0, 1, 2]]
    assert E.length_buckets([8, 7], padding=0.0) == [[0], [1]]


# ----------------------------------------------------------------------------------------------------
# encode_image: workers, bit identity, bounded streaming
# ----------------------------------------------------------------------------------------------------


def _mixed_inputs(tmp_path):
    """Paths (PNG / JPEG, odd sizes, palette and greyscale modes), PIL images, bytes and arrays."""
    rng = np.random.default_rng(0)
    items = []
    for index, path in enumerate(IMAGES[:6]):
        image = Image.open(path).convert("RGB").resize((90 + 7 * index, 70 + 5 * index))
        target = tmp_path / f"img{index}.{'png' if index % 2 else 'jpg'}"
        (image.convert("P") if index == 3 else image.convert("L") if index == 4 else image).save(target)
        items.append(str(target))
    items.append(Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)))
    items.append(target.read_bytes())
    items.append(rng.random((50, 60, 3)))
    return items


def test_encode_image_workers_equal_serial_bit_for_bit(model, tmp_path):
    items = _mixed_inputs(tmp_path)
    serial = model.encode_image(items, batch_size=4, num_workers=0)
    for workers in (1, 3):
        assert np.array_equal(model.encode_image(items, batch_size=4, num_workers=workers), serial)
    # ... and the pixels the pool stacks are the processor's own on the batch.
    processor = model.processor.image_processor
    pooled = torch.cat([b[1]["pixel_values"] for b in E.image_batches(iter(items), processor, 4, 2, False)])
    assert torch.equal(pooled, processor(items, return_tensors="pt")["pixel_values"])
    assert E.default_image_workers() >= 1
    with pytest.raises(ValueError, match="num_workers"):
        model.encode_image(items, num_workers=-1)


def test_encode_image_default_batch_follows_the_device_token_budget(model, monkeypatch):
    """Issue 25: without batch_size, encode_image's batch is the device's image token budget over the tokens of one
    image (CPU: the measured best); an explicit batch_size wins; the embeddings are the same either way."""
    positions = model.config.vision_config.num_positions
    assert E.default_image_batch_size(model) == max(1, min(32, E.DEFAULT_IMAGE_TOKENS_PER_BATCH["cpu"] // positions))
    assert E.default_image_batch_size(model, "cuda") == 32
    monkeypatch.setitem(E.DEFAULT_IMAGE_TOKENS_PER_BATCH, "cpu", 2 * positions)
    calls = record(model, "get_image_features")
    got = model.encode_image([str(p) for p in IMAGES[:5]])
    del model.get_image_features
    assert [len(args[0]) for args, _ in calls] == [2, 2, 1]
    np.testing.assert_allclose(got, model.encode_image([str(p) for p in IMAGES[:5]], batch_size=32), atol=1e-6, rtol=0)


def test_worker_errors_reach_the_caller(model):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        model.encode_image([str(IMAGES[0]), "/no/such/image.png", str(IMAGES[1])], num_workers=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_generator_of_paths_streams_in_bounded_memory(model, workers, monkeypatch):
    """A generator of many paths is consumed lazily: the images read ahead of the model and the decoded images
    alive at once stay bounded (counted with weakref finalizers on every decoded image), whatever the length."""
    count, batch_size = 400, 8
    state = {"pulled": 0, "embedded": 0, "alive": 0, "max_alive": 0, "max_ahead": 0}

    def paths():
        for path in itertools.islice(itertools.cycle(IMAGES[:20]), count):
            state["pulled"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["pulled"] - state["embedded"])
            yield str(path)

    image_processor = model.processor.image_processor
    original_load = type(image_processor).load_image

    def counted_load(self, image, **options):
        decoded = original_load(self, image, **options)
        state["alive"] += 1
        state["max_alive"] = max(state["max_alive"], state["alive"])
        weakref.finalize(decoded, lambda: state.__setitem__("alive", state["alive"] - 1))
        return decoded

    monkeypatch.setattr(type(image_processor), "load_image", counted_load)
    original_features = model.get_image_features

    def counted_features(pixel_values, **kwargs):
        state["embedded"] += len(pixel_values)
        return original_features(pixel_values, **kwargs)

    model.get_image_features = counted_features
    try:
        out = model.encode_image(paths(), batch_size=batch_size, num_workers=workers)
    finally:
        del model.get_image_features
    gc.collect()
    assert out.shape == (count, 32) and state["pulled"] == count
    # Read ahead: the batch being embedded plus at most two batches in flight (never the whole generator).
    assert state["max_ahead"] <= 3 * batch_size
    # Decoded (full-size) images alive at once: one batch serially, one per worker with the pool.
    assert state["max_alive"] <= (batch_size if workers == 0 else workers + 1)
    assert state["alive"] == 0
    # The same batches from a list, serially: bit for bit (24 = three whole batches of 8).
    first = model.encode_image([str(p) for p in itertools.islice(itertools.cycle(IMAGES[:20]), 24)], batch_size=batch_size, num_workers=0)
    assert np.array_equal(out[:24], first)


def test_empty_generator_is_refused(model):
    with pytest.raises(ValueError, match="must not be empty"):
        model.encode_image(iter([]))


# ----------------------------------------------------------------------------------------------------
# The processor comes with the model
# ----------------------------------------------------------------------------------------------------


def test_from_pretrained_loads_the_processor_up_front(tmp_path, tokenizer, monkeypatch):
    model = tiny_model(seed=5)
    model.save_pretrained(tmp_path)
    build_processor(tokenizer).save_pretrained(tmp_path)
    loaded = JinaCLIPModel.from_pretrained(tmp_path)
    assert loaded._processor is not None  # before any encode call
    # Nothing is loaded lazily later: encode works with AutoProcessor unavailable.
    from transformers import AutoProcessor

    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: pytest.fail("processor loaded lazily"))
    assert loaded.encode_text("a frog").shape == (32,)
    monkeypatch.undo()
    skipped = JinaCLIPModel.from_pretrained(tmp_path, load_processor=False)
    with pytest.raises(ValueError, match="has no processor"):
        skipped.encode_text("a frog")
    skipped.processor = loaded.processor  # assignment keeps working
    np.testing.assert_allclose(skipped.encode_text("a frog"), loaded.encode_text("a frog"), atol=1e-6, rtol=0)
