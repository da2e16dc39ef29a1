"""Where users already run models: transformers' pipelines on an exported folder (zero-shot image
classification, feature extraction, image feature extraction), equal to `encode_text` / `encode_image`
based scores; and the release's API for users switching over (`get_text_features(BatchEncoding)`,
`get_image_features(BatchFeature)`, `get_tokenizer()`, `get_preprocess()`, every `encode_*` argument)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _notebook_model import export_tiny_model
from _tiny import ROOT

ATOL = 1e-5
LABELS = ["a frog", "a red car", "ein Hund im Schnee", "猫"]
TEXTS = ["A frog.", "Ein Frosch sitzt im Gras.", "雪の中で遊ぶ犬", "a"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("release_api") / "tiny")


@pytest.fixture(scope="module")
def model(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32).eval()


def _images():
    rng = np.random.default_rng(3)
    demo = sorted((ROOT / "data" / "tuxpaint" / "images").glob("*.jpg"))[:2]
    return [Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)), *map(str, demo)]


def test_zero_shot_image_classification_pipeline(folder, model):
    import logging

    from transformers import pipeline
    from transformers.utils import logging as transformers_logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_logging.get_logger().addHandler(handler)  # transformers' library logger (it does not propagate)
    try:
        classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    finally:
        transformers_logging.get_logger().removeHandler(handler)
    # no "The model 'JinaCLIPModel' is not supported for zero-shot-image-classification": this pipeline is its own
    assert not [r.getMessage() for r in records if "not supported" in r.getMessage()]
    template = "This is a photo of {}."
    text = model.encode_text([template.format(label) for label in LABELS])
    for image in _images():
        result = classifier(image, candidate_labels=LABELS)
        logits = model.logit_scale.exp().item() * (model.encode_image(image) @ text.T)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        expected = sorted(zip(probs, LABELS), key=lambda pair: -pair[0])
        assert [r["label"] for r in result] == [label for _, label in expected]
        assert np.abs(np.array([r["score"] for r in result]) - np.array([p for p, _ in expected])).max() <= ATOL
    # an explicit template and a batch of images
    batch = classifier(_images()[:2], candidate_labels=LABELS[:2], hypothesis_template="{}")
    assert len(batch) == 2 and {r["label"] for r in batch[0]} == set(LABELS[:2])


def test_feature_extraction_pipelines_equal_encode(folder, model):
    from transformers import pipeline

    extractor = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    for text in TEXTS:
        vector = np.array(extractor(text))
        assert vector.shape == (1, 32)
        assert np.abs(vector[0] - model.encode_text(text)).max() <= ATOL
    tensor = extractor(TEXTS[1], return_tensors=True)
    assert isinstance(tensor, torch.Tensor) and np.abs(tensor[0].numpy() - model.encode_text(TEXTS[1])).max() <= ATOL

    image_extractor = pipeline("image-feature-extraction", model=str(folder), trust_remote_code=True)
    for image in _images():
        vector = np.array(image_extractor(image))
        assert vector.shape == (1, 32)
        assert np.abs(vector[0] - model.encode_image(image)).max() <= ATOL


def test_pipelines_decode_images_as_encode_image(folder, model, tmp_path):
    """An EXIF orientation tag: transformers' own load_image would rotate the photo; the folder's pipelines
    (config.json custom_pipelines -> pipeline_jina_clip.py) decode it as encode_image and the release do."""
    from PIL import ImageOps
    from transformers import pipeline

    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (60, 100, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "tagged.jpg"
    photo.save(path, exif=exif, quality=95)
    stored, upright = model.encode_image(str(path)), model.encode_image(ImageOps.exif_transpose(Image.open(path)))
    assert np.abs(stored - upright).max() > 1e-3  # the tag matters for this file

    extractor = pipeline("image-feature-extraction", model=str(folder), trust_remote_code=True)
    assert type(extractor).__name__ == "JinaCLIPImageFeatureExtractionPipeline"
    assert np.abs(np.array(extractor(str(path)))[0] - stored).max() <= ATOL
    classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    assert type(classifier).__name__ == "JinaCLIPZeroShotImageClassificationPipeline"
    text = model.encode_text([f"This is a photo of {label}." for label in LABELS])
    logits = model.logit_scale.exp().item() * (stored @ text.T)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    scores = {r["label"]: r["score"] for r in classifier(str(path), candidate_labels=LABELS)}
    assert np.abs(np.array([scores[label] for label in LABELS]) - probs).max() <= ATOL


def test_get_features_take_processor_outputs_positionally_and_as_kwargs(model):
    processor = model.processor
    tokenized = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = model.get_text_features(tokenized["input_ids"], attention_mask=tokenized["attention_mask"]).pooler_output
    raw = model.encode_text(TEXTS, normalize_embeddings=False)
    assert np.abs(expected.detach().numpy() - raw).max() <= ATOL
    with torch.no_grad():
        for got in (
            model.get_text_features(tokenized),  # release style: the BatchEncoding positionally
            model.get_text_features(**tokenized),
            model.get_text_features(processor(text=TEXTS, padding=True, return_tensors="pt")),
            model.get_text_features(tokenized["input_ids"]),  # mask derived from the pad id, as the release
            model.get_text_features(processor.tokenizer(TEXTS, padding=True)),  # lists, not tensors
        ):
            assert torch.allclose(got.pooler_output, expected, atol=ATOL)
        features = processor.image_processor(_images(), return_tensors="pt")
        expected = model.get_image_features(features["pixel_values"]).pooler_output
        assert np.abs(expected.numpy() - model.encode_image(_images(), normalize_embeddings=False)).max() <= ATOL
        for got in (
            model.get_image_features(features),  # the BatchFeature positionally
            model.get_image_features(**features),
            model.get_image_features(processor(images=_images(), return_tensors="pt")),
            model.get_image_features(processor.image_processor(_images(), return_tensors="np")),
        ):
            assert torch.allclose(got.pooler_output, expected, atol=ATOL)
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_image_features({"input_ids": tokenized["input_ids"]})
    with pytest.raises(ValueError, match="input_ids"):
        model.get_text_features({"pixel_values": features["pixel_values"]})


def test_get_tokenizer_and_get_preprocess(model):
    assert model.get_tokenizer() is model.processor.tokenizer
    assert model.get_preprocess() is model.processor.image_processor
    pixels = model.get_preprocess()(_images()[0], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    assert model.get_tokenizer()("Hello")["input_ids"][0] == 0


def test_every_release_encode_argument_is_accepted(model):
    # The release's positional order: sentences, task, batch_size, show_progress_bar, convert_to_numpy,
    # convert_to_tensor, device, normalize_embeddings, truncate_dim, **tokenizer_kwargs.
    expected = model.encode_text(TEXTS, task="retrieval.query", truncate_dim=16)
    got = model.encode_text(TEXTS, "retrieval.query", 2, False, True, False, "cpu", True, 16, padding=True, truncation=True, max_length=512)
    assert np.abs(got - expected).max() <= ATOL
    as_tensor = model.encode_text(TEXTS, None, 3, False, False, True, None, False, None)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (4, 32)
    as_list = model.encode_text(TEXTS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 4 and isinstance(as_list[0], torch.Tensor)
    assert model.encode_text("one", padding="max_length", max_length=16).shape == (32,)
    # images: images, batch_size, show_progress_bar, convert_to_numpy, convert_to_tensor, device,
    # normalize_embeddings, truncate_dim
    images = _images()
    expected = model.encode_image(images, truncate_dim=8)
    got = model.encode_image(images, 2, False, True, False, "cpu", True, 8)
    assert np.abs(got - expected).max() <= ATOL
    assert isinstance(model.encode_image(images, convert_to_tensor=True), torch.Tensor)


def test_release_arguments_that_no_longer_apply_say_what_to_use(model):
    with pytest.raises(TypeError, match="adapter_mask.*task='retrieval.query'"):
        model.encode_text(TEXTS, adapter_mask=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="retrieval.passage.*task=None"):
        model.encode_text(TEXTS, task="retrieval.passage")
    # the release sliced any width; here only the trained Matryoshka widths, named in the error
    with pytest.raises(ValueError, match=r"valid values: \[8, 16, 32\]"):
        model.encode_text(TEXTS, truncate_dim=10)
    with pytest.raises(ValueError, match=r"valid values: \[8, 16, 32\]"):
        model.encode_image(_images(), truncate_dim=10)
