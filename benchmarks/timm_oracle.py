"""Import timm, the independent EVA02 reference, on any machine (used by benchmarks/encode.py and the tests).

timm imports torchvision. On PyPI, torchvision ships only CUDA builds, whose op library fails to load next to
a CPU build of torch and then crashes at import while registering fake kernels for `torchvision::nms` /
`qnms`. So on CPU-only machines `make setup` installs timm and torchvision into `.oracle/` (outside the
venv, where they would break `import transformers`), and this module defines those two op schemas first.
The shim applies only when torchvision's library did not load. Imports nothing but torch, so a subprocess
that only needs timm stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ORACLE_DIR = Path(__file__).resolve().parent.parent / ".oracle"
_LIBRARIES: list = []  # keep the op-schema libraries alive for the life of the process


def import_timm():
    """Return the timm module; raises ImportError with a hint when it is not installed anywhere."""
    try:
        import timm

        return timm
    except ImportError:
        pass
    if not ORACLE_DIR.is_dir():
        raise ImportError("timm is not installed (and no .oracle/ folder: run `make setup`)")
    if str(ORACLE_DIR) not in sys.path:
        sys.path.append(str(ORACLE_DIR))
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "FRAGMENT")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)
    import timm

    return timm
