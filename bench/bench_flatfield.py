"""The cost of the flat field: time and memory of measuring and flattening an image's background, by image size.

Every image predicted is measured (``imaging.background_unevenness``); one whose background varies by more than
``adaptation.MAX_BACKGROUND_UNEVENNESS`` is also flattened (``imaging.flatten_background``). On gray float32 images of
disks on a background ramp (flattened as an uneven image is), median of ``--repeats`` calls each; memory is the peak
that NumPy's arrays reach during one call beyond the image itself (``tracemalloc``), against the image's own size.
Writes ``bench/results/flatfield.json``.

    python bench/bench_flatfield.py
    python bench/bench_flatfield.py --quick
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

import common

SIDES = (1024, 4096, 10000)
QUICK_SIDES = (256, 512)


def ramped_disks(side: int) -> np.ndarray:
    """A side x side float32 image in [0, 1]: bright disks of radius 10 every 40 pixels on a left-to-right ramp."""
    rows = np.arange(side, dtype=np.float32)
    near = np.minimum(rows % 40, 40 - rows % 40)  # distance to the nearest disk centre along one axis
    disks = (near[:, None] ** 2 + near[None, :] ** 2) <= 100
    image = 0.1 + 0.4 * np.linspace(0, 1, side, dtype=np.float32)[None, :] + 0.5 * disks
    return (image / image.max()).astype(np.float32)


def measure(function, image: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB NumPy allocated during one call) of ``function(image)``."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(image)
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    function(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return common.median(seconds), peak / 2**20


def main(argv=None) -> int:
    parser = common.base_parser("flatfield", __doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="calls timed per size (default 3)")
    args = parser.parse_args(argv)

    from nucleunet import adaptation, imaging

    rows, results = [], []
    for side in QUICK_SIDES if args.quick else SIDES:
        image = ramped_disks(side)
        unevenness = imaging.background_unevenness(image)
        measure_seconds, measure_mib = measure(imaging.background_unevenness, image, args.repeats)
        flatten_seconds, flatten_mib = measure(imaging.flatten_background, image, args.repeats)
        image_mib = image.nbytes / 2**20
        rows.append((f"{side} x {side}", image_mib, unevenness, measure_seconds, measure_mib, flatten_seconds,
                     flatten_mib))
        results.append({"side": side, "image_mib": image_mib, "unevenness": unevenness,
                        "flattened": unevenness > adaptation.MAX_BACKGROUND_UNEVENNESS,
                        "measure_seconds": measure_seconds, "measure_peak_mib": measure_mib,
                        "flatten_seconds": flatten_seconds, "flatten_peak_mib": flatten_mib})
        del image
    common.print_table("The flat field's cost (float32 gray images, median of repeats)", rows,
                       ("image", "MiB", "unevenness", "measure s", "measure MiB", "flatten s", "flatten MiB"))
    common.write_json(args.json, {"benchmark": "flatfield", "quick": args.quick, "repeats": args.repeats,
                                  "machine": common.machine(), "sizes": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
