"""``Model.segment`` in a process of its own, for a program that must not load TensorFlow itself.

The napari plugin segments this way: with some OpenGL drivers (Mesa's, common on Linux) TensorFlow and the viewer's
OpenGL crash when they share a process. The child (``python -m nucleunet.remote``) imports nothing but this package,
loads each model once and keeps it; requests and answers are pickled over its standard input and output.

    segmenter = RemoteSegmenter()
    for kind, value in segmenter.segment(None, image, name="cells", pixel_size=None, tta=True):
        ...   # ('total', tiles), ('tiles', done), ..., then ('result', {"labels", "measurements", "count"})
    segmenter.close()
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator

from nucleunet.errors import UserError


class RemoteSegmenter:
    """One child process that segments images with ``Model.segment``, one request at a time."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "nucleunet.remote"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=None)
        self.lock = threading.Lock()

    def segment(self, model_path: str | None, image, *, name: str, pixel_size, tta: bool) -> Iterator[tuple]:
        """Segment ``image`` in the child: yields ('total', tiles) and ('tiles', done) as it goes, then
        ('result', {"labels", "measurements", "count"}). A ``UserError`` in the child is raised here."""
        with self.lock:
            pickle.dump((model_path, image, name, pixel_size, tta), self.process.stdin)
            self.process.stdin.flush()
            while True:
                try:
                    kind, value = pickle.load(self.process.stdout)
                except EOFError:
                    raise RuntimeError(f"the model's process ended (exit code {self.process.wait()})") from None
                if kind == "error":
                    raise UserError(value)
                if kind == "failure":
                    raise RuntimeError(value)
                yield kind, value
                if kind == "result":
                    return

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def serve(requests, answers) -> None:
    """The child's loop: for each pickled request on ``requests``, the messages of ``RemoteSegmenter.segment``."""
    from nucleunet.api import load_model

    models = {}

    def send(kind, value):
        pickle.dump((kind, value), answers)
        answers.flush()

    while True:
        try:
            model_path, image, name, pixel_size, tta = pickle.load(requests)
        except EOFError:
            return
        try:
            if model_path not in models:
                models[model_path] = load_model(model_path)
            found = models[model_path].segment(image, name=name, pixel_size=pixel_size, tta=tta,
                                               progress=lambda tiles: send("tiles", tiles),
                                               total=lambda tiles: send("total", tiles))
            send("result", {"labels": found.labels, "measurements": found.measurements, "count": found.count})
        except UserError as error:
            send("error", str(error))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
            send("failure", f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    # The answers go to the original standard output; anything printed (TensorFlow's start-up notes) to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
