"""Runs the napari plugin in a real viewer, in a process that never loads TensorFlow (with Mesa's OpenGL the two crash
together; the plugin keeps TensorFlow in a process of its own, and so must the test).

    python tests/napari_check.py '{"image": "x.png", "labels_tiff": "y.tif", "out": "folder", "screenshot": null}'

Segments ``image`` with the dock widget (the ready model, no test-time augmentation), opens ``labels_tiff`` with the
plugin's reader, and writes into ``out``: ``labels.npy`` (the widget's Labels layer), ``result.json`` (the layers, the
features' columns, the reader's layer type and scale, and whether TensorFlow was loaded here). Needs a display with
OpenGL (Xvfb). With ``screenshot``, a picture of the viewer is saved there.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(request: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import napari
    import numpy as np
    import skimage.io
    from qtpy.QtWidgets import QApplication

    from nucleunet.napari import SegmentWidget

    viewer = napari.Viewer(show=bool(request.get("screenshot")))
    image = skimage.io.imread(request["image"])
    layer = viewer.add_image(image, name="cells", rgb=image.ndim == 3)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment nuclei")
    widget.tta.value = False
    widget.layer.value = layer
    widget.run()
    application, started = QApplication.instance(), time.monotonic()
    while time.monotonic() - started < 300 and "cells nuclei" not in [layer.name for layer in viewer.layers]:
        application.processEvents()
        time.sleep(0.02)
    labels_layer = viewer.layers["cells nuclei"]
    out = Path(request["out"])
    np.save(out / "labels.npy", np.asarray(labels_layer.data))
    opened = viewer.open(request["labels_tiff"], plugin="nucleunet")
    if request.get("screenshot"):
        opened[0].visible = False
        viewer.layers.selection.active = labels_layer
        viewer.reset_view()
        for _ in range(20):
            application.processEvents()
        skimage.io.imsave(request["screenshot"], viewer.screenshot(canvas_only=False, flash=False),
                          check_contrast=False)
    result = {"layers": [layer.name for layer in viewer.layers], "status": widget.status.value,
              "features": list(labels_layer.features.columns), "feature_rows": len(labels_layer.features),
              "progress_total": widget.progress.max, "reader_type": opened[0].__class__.__name__,
              "reader_scale": [float(value) for value in opened[0].scale],
              "tensorflow_here": "tensorflow" in sys.modules}
    widget.segmenter.close()
    viewer.close()
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
