"""The exported folder in the clients people serve embedding models with, none of them written here:
transformers.js (the npm package @huggingface/transformers in Node, tests/js) and fastembed (PyPI, in its own
venv .venv-fastembed), both installed by `make setup` at the versions of their committed locks.

They run the README's Serve snippets as written (the folder, the inputs and the precision substituted) on a
tiny random model with the real XLM-R tokenizer (`jina-clip export --onnx`), offline, and their embeddings
are compared with `encode_text` / `encode_image` row by row (cosine). The lowest cosines measured are kept as
floors in `hub.onnx.CLIENT_PARITY`, which onnx/parity.md and the model card state; the pixels of
transformers.js's own resize (RawImage.read + its image processor, without the README's `readImage`) are
measured against this package's processor, and the README and the model card state those numbers
(`hub.onnx.TRANSFORMERS_JS_RESIZE`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _inputs import INSTRUCTION, STRINGS, exif_rotated_jpeg, photo
from _tiny import ROOT, build_processor, tiny_model

from jina_clip_v2.hub import onnx as hub_onnx
from jina_clip_v2.hub.export import export_model

JS_DIR = ROOT / "tests" / "js"
FASTEMBED_PYTHON = ROOT / ".venv-fastembed" / "bin" / "python"
FOLDER = "jina-clip-v2-converted"  # the folder name of the README's snippets
README_TEXTS = '["Ein Hund spielt im Schnee", "un chat"]'
README_IMAGES = '["dog.jpg", "cat.png"]'
DEMO = ROOT / "data" / "tuxpaint"


def _snippet(language: str, marker: str) -> str:
    """The README's ```<language> block that contains `marker` (exactly one)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", readme, flags=re.S) if marker in b]
    assert len(blocks) == 1, f"expected one ```{language} block with {marker!r} in README.md, found {len(blocks)}"
    return blocks[0]


def _substitute(snippet: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert snippet.count(old) == 1, f"the README snippet no longer holds {old!r} once"
        snippet = snippet.replace(old, new)
    return snippet


def _clients_installed() -> None:
    missing = [str(p) for p in (JS_DIR / "node_modules" / "@huggingface" / "transformers", FASTEMBED_PYTHON) if not p.exists()]
    if missing:
        raise AssertionError(f"the clients are not installed ({', '.join(missing)}): run `make setup`")


def _cosines(got, expected) -> np.ndarray:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))


def _client_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "FASTEMBED_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(work / "hf_home"), FASTEMBED_CACHE_PATH=str(work / "fastembed_cache"))
    return env


# ----------------------------------------------------------------------------------------------------
# The folder and the inputs
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder holding the exported folder (under the README's name) and the input images."""
    _clients_installed()
    from jina_clip_v2.assets import default_tokenizer_dir
    from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

    work = tmp_path_factory.mktemp("clients")
    (work / "node_modules").symlink_to(JS_DIR / "node_modules")  # what `npm install` gives the README's project
    # transformers.js and fastembed need a tokenizer.json their own tokenizer libraries read: the real XLM-R
    # one (the tiny Unigram tokenizer's normalizer, `Nmt`, is not implemented in transformers.js).
    model = tiny_model(seed=0, vocab_size=250002)
    processor = build_processor(load_tokenizer(default_tokenizer_dir()), image_size=model.config.vision_config.image_size)
    export_model(model, work / FOLDER, processor=processor)
    hub_onnx.export_onnx(work / FOLDER, parity=False)  # = jina-clip export --onnx, less the ONNX Runtime parity table
    images = work / "images"
    images.mkdir()
    records = [json.loads(line) for line in (DEMO / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    for record in records[::70]:  # photos of 27 to 192 px: the tiny model's 56 px is a downscale of up to 3.4x
        (images / Path(record["image"]).name).write_bytes((DEMO / record["image"]).read_bytes())
    # A 1024 x 768 collage of demo photos: the 10x-plus downscale of a camera photo to 512 px.
    collage = Image.new("RGB", (1024, 768))
    for index, record in enumerate(records[3:51]):
        with Image.open(DEMO / record["image"]) as stamp:
            collage.paste(stamp.convert("RGB").resize((128, 128), Image.Resampling.BICUBIC), (index % 8 * 128, index // 8 * 128))
    collage.save(images / "collage.png")
    # Synthetic photos near the model's size (the export's probes), an RGBA PNG whose transparent pixels keep their
    # colours, a palette PNG, a greyscale JPEG and a JPEG with an EXIF rotation (neither the release nor
    # encode_image applies it).
    Image.fromarray(photo(86, 65, 1)).save(images / "probe_wide.png")
    Image.fromarray(photo(56, 112, 2)).save(images / "probe_tall.jpg", quality=92)
    rgba = np.dstack([photo(70, 50, 3), np.where(np.arange(70)[None, :] % 3 == 0, 255, 0).repeat(50, 0)]).astype(np.uint8)
    Image.fromarray(rgba).save(images / "rgba.png")
    Image.fromarray(photo(80, 64, 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(images / "palette.png")
    Image.fromarray(photo(80, 64, 5)).convert("L").save(images / "greyscale.jpg", quality=90)
    exif_rotated_jpeg(images / "exif_rotated.jpg")
    return work


def image_paths(work: Path) -> list[str]:
    return sorted(str(p) for p in (work / "images").iterdir())


TEXTS = [s for s in STRINGS if len(s) < 1000] + [
    INSTRUCTION + "Ein Hund spielt im Schnee",
    " ".join(json.loads(line)["en"] for line in (DEMO / "captions.jsonl").read_text(encoding="utf-8").splitlines()[:150]),
]


@pytest.fixture(scope="module")
def reference(work):
    """The folder loaded as users load it, and its embeddings of the inputs (texts truncated at encode_text's
    512 tokens, and at the tokenizer's model_max_length, where fastembed truncates)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(work / FOLDER), trust_remote_code=True).eval()
    tokenizer = model.processor.tokenizer
    assert len(tokenizer(TEXTS[-1])["input_ids"]) > 512  # one text longer than encode_text's default
    return {
        "model": model,
        "text": model.encode_text(TEXTS),
        "text_untruncated": model.encode_text(TEXTS, max_length=tokenizer.model_max_length),
        "image": model.encode_image(image_paths(work)),
        "ids": tokenizer(TEXTS, padding=True, truncation=True, max_length=512)["input_ids"],
    }


# ----------------------------------------------------------------------------------------------------
# transformers.js
# ----------------------------------------------------------------------------------------------------


def run_transformers_js(work: Path, dtype: str, texts: list[str], images: list[str]) -> subprocess.Popen:
    """The README's Node snippet, on `texts` / `images` in `dtype`, plus one line printing the token ids and the
    pixels it fed the models, run in the working folder (the README's project: node_modules, the exported folder)."""
    snippet = _substitute(
        _snippet("js", "@huggingface/transformers"),
        {
            'const dtype = "fp32";': f'const dtype = "{dtype}";',
            README_TEXTS: json.dumps(texts, ensure_ascii=False),
            README_IMAGES: json.dumps(images),
        },
    )
    snippet += (
        "console.log(JSON.stringify({ ids: textInputs.input_ids.tolist().map((row) => row.map(Number)), "
        "pixels: Array.from(imageInputs.pixel_values.data), dims: imageInputs.pixel_values.dims }));\n"
    )
    script = work / f"readme_snippet_{dtype}.mjs"
    script.write_text(snippet, encoding="utf-8")
    return subprocess.Popen(["node", str(script)], cwd=work, env=_client_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def transformers_js(work) -> dict[str, dict]:
    """The README snippet's outputs in fp32, fp16 and q8 (three Node processes side by side)."""
    processes = {dtype: run_transformers_js(work, dtype, TEXTS, image_paths(work)) for dtype in ("fp32", "fp16", "q8")}
    outputs = {}
    for dtype, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"transformers.js ({dtype}) failed:\n{stderr[-3000:]}"
        embeddings, diagnostics = (json.loads(line) for line in stdout.strip().splitlines()[-2:])
        outputs[dtype] = {**embeddings, **diagnostics}
    return outputs


def test_transformers_js_tokenizes_as_python(transformers_js, reference):
    """The ids of every string of tests/_inputs.py, from the real XLM-R tokenizer.json read by transformers.js's
    own tokenizer library, equal Python's, but for truncation: transformers.js cuts after adding the special
    tokens, so a text longer than 512 tokens ends in a text token where Python keeps `</s>` (README)."""
    for dtype, output in transformers_js.items():
        got, expected = output["ids"], reference["ids"]
        assert got[:-1] == expected[:-1], dtype
        assert got[-1][:-1] == expected[-1][:-1] and expected[-1][-1] == 2 and got[-1][-1] != 2, dtype


def test_transformers_js_readme_read_image_gives_the_release_pixels(transformers_js, reference, work):
    """The README's `readImage` (sharp: bicubic with antialiasing, torchvision's crop rounding, no EXIF rotation)
    feeds the image processor transformers.js builds from preprocessor_config.json (rescale, mean / std): on
    downscaled images the pixels equal this package's processor's within half a level of 255 on average
    (libvips' bicubic is not PIL's bit for bit); enlarged small images differ more (libvips interpolates there)."""
    image_processor = reference["model"].processor.image_processor
    paths = image_paths(work)
    expected = image_processor(paths, return_tensors="np")["pixel_values"]
    got = np.asarray(transformers_js["fp32"]["pixels"], np.float32).reshape(transformers_js["fp32"]["dims"])
    levels = (np.abs(got - expected) * np.asarray(image_processor.image_std).reshape(1, 3, 1, 1) * 255).mean(axis=(1, 2, 3))
    size = image_processor.crop_size["height"]
    for path, mean in zip(paths, levels):
        with Image.open(path) as image:
            shrunk = min(image.size) > size
        print(f"readImage + transformers.js's processor, {Path(path).name}: {mean:.2f} levels of 255 from PIL's on average")
        assert mean < (1.5 if shrunk else 3.0), (Path(path).name, mean)


def test_transformers_js_embeddings_equal_encode_in_every_precision(transformers_js, reference):
    measured = {}
    for dtype, output in transformers_js.items():
        text, image = _cosines(output["text"], reference["text"]), _cosines(output["image"], reference["image"])
        measured[dtype] = {"text": float(text.min()), "image": float(image.min())}
    print(_table("transformers.js", measured))
    for dtype, floors in hub_onnx.CLIENT_PARITY["transformers.js"]["rows"].items():
        for modality, floor in floors.items():
            assert measured[dtype][modality] >= floor, (dtype, modality, measured[dtype][modality], floor)
    assert measured["fp32"]["text"] >= 0.9999 and min(m["image"] for m in measured.values()) >= 0.99


def test_transformers_js_own_resize_differs_from_pil(work, reference, tmp_path):
    """Images read with RawImage.read and resized by transformers.js's image processor (sharp's affine transform:
    no antialiasing, shifted by up to 1.5 px, the last rows and columns darkened; EXIF rotation applied): the pixel
    difference to the release's (PIL) pixels at 512 px, which the README and the model card state, and the
    cosine it costs the tiny model at 56 px."""
    from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor

    stated = hub_onnx.TRANSFORMERS_JS_RESIZE
    for size in (56, 512):
        # 512 px: the demo photos and their collage (what the statement is about); 56 px: every image but the
        # EXIF-rotated one, through the tiny model.
        paths = [p for p in image_paths(work) if "exif" not in p and (size == 56 or p.endswith(".jpg") and "-" in Path(p).name or "collage" in p)]
        folder = tmp_path / f"processor_{size}"
        image_processor = JinaCLIPImageProcessor(size=size)
        image_processor.save_pretrained(folder)
        got = run_preprocess(folder, paths, tmp_path / f"pixels_{size}.f32")
        expected = image_processor(paths, return_tensors="np")["pixel_values"]
        levels = np.abs(got - expected) * np.asarray(image_processor.image_std).reshape(1, 3, 1, 1) * 255
        print(f"transformers.js's own resize at {size} px: {levels.mean():.2f} levels of 255 on average, at most {levels.max():.0f}")
        if size == 512:
            assert len(paths) == 9
            assert levels.mean() <= stated["mean_levels"] and round(levels.max(), 3) <= stated["max_levels"], (levels.mean(), levels.max())
            assert levels.mean() >= stated["mean_levels"] / 2  # still the resize the README describes
            for text in (_readme(), hub_onnx.transformers_js_resize_note()):
                assert f"{stated['mean_levels']:g} levels" in text and f"at most {stated['max_levels']:g}" in text
        else:
            import torch

            model = reference["model"]
            with torch.no_grad():
                own = model.get_image_features(torch.from_numpy(got)).pooler_output.numpy()
            cosine = _cosines(own, reference["image"][[image_paths(work).index(p) for p in paths]])
            print(f"transformers.js's own resize at 56 px, tiny model: min image cosine {cosine.min():.4f}")
            assert cosine.min() >= stated["tiny_model_min_cosine"]
    # RawImage.read applies the EXIF orientation (sharp's rotate()); the release does not.
    exif = [p for p in image_paths(work) if "exif" in p]
    got = run_preprocess(tmp_path / "processor_56", exif, tmp_path / "exif.f32")
    with Image.open(exif[0]) as image:
        upright = image.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    image_processor = reference["model"].processor.image_processor
    assert np.abs(got - image_processor(upright, return_tensors="np")["pixel_values"]).mean() < 0.1
    assert np.abs(got - image_processor(exif, return_tensors="np")["pixel_values"]).mean() > 0.3


def run_preprocess(folder: Path, paths: list[str], out: Path) -> np.ndarray:
    done = subprocess.run(
        ["node", str(JS_DIR / "preprocess.mjs"), str(folder), str(out), *paths],
        cwd=JS_DIR, env=_client_env(out.parent), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return np.fromfile(out, dtype="<f4").reshape(json.loads(done.stdout.strip().splitlines()[-1])["dims"])


# ----------------------------------------------------------------------------------------------------
# fastembed
# ----------------------------------------------------------------------------------------------------


def test_fastembed_embeds_texts_and_images(work, reference):
    """The README's fastembed snippet in fastembed's own venv. fastembed truncates texts at the tokenizer's
    model_max_length (no per-call limit), so its long text equals encode_text(max_length=model_max_length)."""
    snippet = _substitute(
        _snippet("python", "from fastembed import"),
        {
            f'folder = "{FOLDER}"': f"folder = {str(work / FOLDER)!r}",
            README_TEXTS: json.dumps(TEXTS, ensure_ascii=False),
            README_IMAGES: json.dumps(image_paths(work)),
        },
    )
    snippet += (
        "\nimport json\nprint(json.dumps({'text': [e.tolist() for e in text_embeddings], "
        "'image': [e.tolist() for e in image_embeddings]}))\n"
    )
    done = subprocess.run(
        [str(FASTEMBED_PYTHON), "-c", snippet], cwd=work, env=_client_env(work), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout.strip().splitlines()[-1])
    text = _cosines(output["text"], reference["text_untruncated"])
    measured = {"fp32": {"text": float(text.min()), "image": float(_cosines(output["image"], reference["image"]).min())}}
    print(_table("fastembed", measured))
    for dtype, floors in hub_onnx.CLIENT_PARITY["fastembed"]["rows"].items():
        for modality, floor in floors.items():
            assert measured[dtype][modality] >= floor, (dtype, modality, measured[dtype][modality], floor)
    # ... and its truncation is not encode_text's default: the long text differs there
    assert _cosines(output["text"], reference["text"])[-1] < 0.9999


# ----------------------------------------------------------------------------------------------------
# What the folder and the docs say
# ----------------------------------------------------------------------------------------------------


def test_the_tested_versions_are_the_stated_ones():
    """The versions CLIENT_PARITY names (in parity.md and the card: tests/test_onnx.py) are the locked ones."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text(encoding="utf-8"))
    js_version = lock["packages"]["node_modules/@huggingface/transformers"]["version"]
    fastembed_lock = (ROOT / "requirements" / "fastembed.lock").read_text(encoding="utf-8")
    fastembed_version = re.search(r"^fastembed==(\S+)$", fastembed_lock, flags=re.M).group(1)
    assert hub_onnx.CLIENT_PARITY["transformers.js"]["version"] == js_version
    assert hub_onnx.CLIENT_PARITY["fastembed"]["version"] == fastembed_version
    assert f"transformers.js {js_version} in Node" in _readme() and f"fastembed {fastembed_version}" in _readme()


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _table(client: str, measured: dict[str, dict[str, float]]) -> str:
    return "\n".join(f"{client} {dtype}: text {m['text']:.6f}, image {m['image']:.6f}" for dtype, m in measured.items())
