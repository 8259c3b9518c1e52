"""nucleunet: nucleus segmentation with a U-Net born on the 2018 Data Science Bowl data.

    import nucleunet
    model = nucleunet.load_model()              # the ready model; or a name, a .keras file, a run folder
    result = model.segment(image)               # an (H, W) or (H, W, C) array
    result.labels, result.measurements          # label image, one table row per nucleus
    nucleunet.segment_files(["my_images/"])     # many files: what the predict command writes

The names below load their modules at first use, so ``import nucleunet`` starts no deep-learning backend.
"""

from __future__ import annotations

import importlib

from nucleunet.errors import MissingPathError, UserError

__version__ = "1.0.0"

_LAZY = {
    "load_model": "nucleunet.api",
    "Model": "nucleunet.api",
    "Segmentation": "nucleunet.api",
    "segment_files": "nucleunet.batch",
    "Batch": "nucleunet.batch",
    "Postprocessing": "nucleunet.postprocessing",
    "READY_MODELS": "nucleunet.models",
}

__all__ = ["MissingPathError", "UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nucleunet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
