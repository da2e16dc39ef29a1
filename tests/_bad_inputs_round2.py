"""What the two files of the round-two bad-input battery (issue 20) share: the peak-memory measure of the bomb cases,
the context every case gets (a tiny exported model loaded back, a scratch folder, the URL server, an ONNX export made
on first use), the module-scoped fixture that builds it, and the runner of one case.

tests/test_bad_inputs_round2_inputs.py: what is read (image decode and resize bounds, config.json values, training
data). tests/test_bad_inputs_round2_tools.py: what the tools write and take (exports and ONNX files, push's
allow-list, the ONNX helper's inputs, command-line mistakes). The `Case` table is tests/test_bad_inputs.py's.

Each case asserts a clear error (its type and a message that names the problem) or the correct result."""

from __future__ import annotations

import base64
import io
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tiny import build_processor, build_tokenizer, tiny_model
from test_bad_inputs import OK, Case
from jina_clip_v2.modeling import JinaCLIPModel

MiB = 2**20
# A lossless WebP of 12000 x 12000 black pixels: 34 bytes that decode to 432 MB (3 GB through the old resize).
WEBP_12000 = base64.b64decode("UklGRhoAAABXRUJQVlA4TA4AAAAv3+63CwcQEf0PRET/Aw==")
PEAKS: dict[str, int] = {}  # case -> peak bytes added (printed at the end of each file with -s)


# ----------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rss_measurable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_added(fn, *args):
    """(fn's result or the exception it raised, the peak memory it added in bytes). Resident memory where Linux
    lets the peak be reset (/proc/self/clear_refs), else the Python-level peak (tracemalloc)."""
    if _rss_measurable():
        before = _status("VmRSS")
        try:
            result = fn(*args)
        except Exception as err:  # noqa: BLE001 - handed back to the case
            result = err
        return result, _status("VmHWM") - before
    tracemalloc.start()
    try:
        result = fn(*args)
    except Exception as err:  # noqa: BLE001
        result = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def bounded(limit_mib: float, fn):
    """A case's `run` that also asserts its peak memory stays under `limit_mib` (whatever the outcome)."""

    def run(c):
        result, peak = peak_added(fn, c)
        PEAKS[c.current] = peak
        assert peak < limit_mib * MiB, f"peak memory {peak / MiB:.1f} MiB >= {limit_mib} MiB"
        if isinstance(result, Exception):
            raise result
        return result

    return run



# ----------------------------------------------------------------------------------------------------------
# Shared inputs
# ----------------------------------------------------------------------------------------------------------


class Ctx:
    """A tiny exported model (loaded back), its folder, a scratch folder, the URL server, an ONNX export (made on
    first use)."""

    def __init__(self, model, exported: Path, tmp: Path, url: str):
        self.model, self.exported, self.tmp, self.url = model, exported, tmp, url
        self.current = ""
        self._count = 0
        self._onnx: Path | None = None

    def path(self, name: str) -> Path:
        self._count += 1
        return self.tmp / f"{self._count}-{name}"

    def file(self, data: bytes, name: str = "x.png") -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    def copy_export(self) -> Path:
        out = self.path("export")
        shutil.copytree(self.exported, out)
        return out

    def onnx(self) -> Path:
        """A copy of the export with fp32 ONNX towers (`jina-clip onnx --precisions fp32 --no-parity`)."""
        if self._onnx is None:
            from jina_clip_v2.hub.onnx import export_onnx

            self._onnx = self.copy_export()
            export_onnx(self._onnx, precisions=["fp32"], parity=False)
        return self._onnx


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# The fixture, the runner, the battery's own checks
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, server):  # server: the _http fixture, imported beside this one
    from _http import _Handler

    from jina_clip_v2.hub.export import export_model

    _Handler.extra["/bomb.webp"] = ("image/webp", WEBP_12000)
    model = tiny_model(seed=0)
    processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    exported = export_model(model, tmp_path_factory.mktemp("round2") / "tiny", processor=processor)
    model = JinaCLIPModel.from_pretrained(str(exported)).eval()
    yield Ctx(model, Path(exported), tmp_path_factory.mktemp("scratch"), server)
    if PEAKS:
        print("\npeak memory added per case (MiB): " + ", ".join(f"{k} {v / MiB:.1f}" for k, v in PEAKS.items()))
        PEAKS.clear()


def battery(categories: dict[str, list[Case]]) -> list:
    """The cases as pytest params, with ids "category:case"."""
    return [pytest.param(case, id=f"{category}:{case.id}") for category, cases in categories.items() for case in cases]


def check_battery(params: list, categories: dict[str, list[Case]], minimum: int) -> None:
    ids = [param.id for param in params]
    assert len(ids) == len(set(ids)) and len(ids) >= minimum, len(ids)
    assert all(len(cases) >= 5 for cases in categories.values())


def run_case(case: Case, ctx: Ctx) -> None:
    ctx.current = case.id
    if case.error is OK:
        case.check(ctx, case.run(ctx))
        return
    expected = ValueError if isinstance(case.error, str) else case.error
    with pytest.raises(expected, match=case.match) as info:
        case.run(ctx)
    if isinstance(case.error, str):
        assert case.error in [cls.__name__ for cls in type(info.value).__mro__], type(info.value)
    assert str(info.value) and "Traceback" not in str(info.value)
