"""Inputs every entry point must read as the release does: image files of every mode PIL converts
differently (tests/test_image_inputs.py) and strings that tokenizers split in every way that can differ
(tests/test_tokenizer.py); Sentence-Transformers is checked on both (tests/test_sentence_transformers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

INSTRUCTION = "Represent the query for retrieving evidence documents: "
STRINGS = [
    "a ",  # trailing space: the release keeps a final "\u2581" piece
    "a  ",
    " a",  # leading space
    "   leading spaces",
    "multiple   inner    spaces",
    "tab\tseparated\tvalues",
    "trailing tab\t",
    "line one\nline two",
    "a line read from a file\n",
    "windows line\r\n",
    "",
    " ",
    "\n",
    INSTRUCTION,  # query prefix + empty text, as encode_text("", task="retrieval.query") sends it
    INSTRUCTION + "a dog ",
    "一只狗在雪地里玩耍",  # CJK
    "雪の中で遊ぶ犬。 ",
    "눈 속에서 노는 개",
    "كلب يلعب في الثلج",  # Arabic
    "כלב משחק בשלג",  # Hebrew
    "👩‍👩‍👧‍👦 family emoji with ZWJ",
    "🏳️‍🌈 flag 🇩🇪",
    "e\u0301te\u0301 combining accents",  # decomposed é
    "été precomposed",
    "ﬁnance ﬂow ligatures",  # NFKC-sensitive
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",
    "x² + y³ = z⁴ superscripts",
    "Ⅻ roman numeral, ㎏ unit, ½ fraction",
    "zero\u200bwidth space and nbsp\u00a0here",
    "hello <mask> world",  # special-token text inside a string
    "<s>already wrapped</s>",
    "MiXeD CaSe, punctuation!!! ... ???",
    "https://example.com/a/b.jpg?x=1",
    "ईमेल हिंदी में",
    "Ein Hund spielt im Schnee ",
    "word " * 10_000,  # a 50k-character text
]


def photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x * 3 + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def exif_rotated_jpeg(path: Path) -> None:
    image = Image.fromarray(photo(90, 60, 7))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(path, format="JPEG", quality=92, exif=exif)


def write_image_files(folder: Path) -> dict[str, Path]:
    """At least 15 files, one per way PIL's convert("RGB") can differ from a naive conversion."""
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        path = folder / f"{name}.{fmt.lower()}"
        image.save(path, format=fmt, **kwargs)
        files[name] = path

    rgb = Image.fromarray(photo(80, 64, 1))
    save("rgb_png", rgb, "PNG")
    save("rgb_jpeg", rgb, "JPEG", quality=90)
    hidden = np.dstack([photo(70, 50, 2), np.where(np.arange(70)[None, :] % 3 == 0, 255, 0).repeat(50, 0)]).astype(np.uint8)
    save("rgba_hidden_colours", Image.fromarray(hidden), "PNG")  # transparent pixels keep colours
    half = hidden.copy()
    half[..., 3] = 128
    save("rgba_half_transparent", Image.fromarray(half), "PNG")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette", palette, "PNG")
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    save("palette_transparency", transparent, "PNG", transparency=3)
    save("gif_palette", palette, "GIF")
    save("la", Image.fromarray(np.dstack([photo(60, 40, 3)[..., 0], photo(60, 40, 4)[..., 1]])), "PNG")
    save("greyscale", rgb.convert("L"), "PNG")
    save("bilevel", rgb.convert("1"), "PNG")
    sixteen = (photo(64, 48, 5)[..., 0].astype(np.uint16) * 257).astype(np.uint16)  # spans 0..65535
    save("i16_png", Image.fromarray(sixteen), "PNG")
    save("i32_tiff", Image.fromarray(sixteen.astype(np.int32)), "TIFF")
    save("float_tiff", Image.fromarray(photo(50, 50, 6)[..., 1].astype(np.float32) * 1.5), "TIFF")
    save("cmyk_jpeg", rgb.convert("CMYK"), "JPEG", quality=90)
    exif_rotated_jpeg(folder / "exif_rotated.jpeg")
    files["exif_rotated"] = folder / "exif_rotated.jpeg"
    save("one_pixel", Image.new("RGB", (1, 1), (200, 10, 90)), "PNG")
    save("very_wide", Image.fromarray(photo(600, 12, 8)), "PNG")
    save("very_tall", Image.fromarray(photo(9, 400, 9)), "PNG")
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated_gif"] = path
    save("webp_alpha", Image.fromarray(hidden), "WEBP", lossless=True)
    return files
