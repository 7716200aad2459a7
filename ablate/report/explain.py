"""`ablate explain CKPT IMAGE...`: single photos through a trained network, as a self-contained HTML page:
the detected face (`resmasknet.data.faces`), class probabilities, each stage's mask and Captum attributions.
Also writes ``probabilities.csv`` (one row per image), which the command line prints.

Example:
    >>> explain("runs/quickstart/trials/0000/best.pt", ["me.jpg"], "reports/explain")   # .../index.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.report.figures import faces_strip
from ablate.report.page import Page
from resmasknet.data.faces import detect_face, face_detector, read_image
from resmasknet.runtime import atomic_dir

__all__ = ["explain", "face_notes"]

log = logging.getLogger(__name__)


def face_notes(paths: Sequence[Path], boxes: Sequence[tuple[int, int, int, int] | None]) -> list[str]:
    """One line per image: where its face was found, or that the whole image is used and why."""
    notes = []
    for p, box in zip(paths, boxes):
        if box is not None:
            notes.append(f"{p}: face at x={box[0]} y={box[1]} w={box[2]} h={box[3]} (with margin)")
            continue
        why = "no face found"
        if face_detector() is None:
            import cv2

            why += f" (no Haar face detector in OpenCV {cv2.__version__}; opencv-python-headless<5 ships one)"
        notes.append(f"{p}: {why}; using the whole image")
        log.warning(notes[-1])
    return notes


def explain(checkpoint: str | Path, images: Sequence[str | Path], out: str | Path, *, progress: bool = False,
            methods: Sequence[str] = ("saliency", "ig", "gradcam", "mask_attr"), device: str | None = None) -> Path:
    """Writes ``<out>/index.html`` and ``<out>/probabilities.csv``; returns the page's path. Every image is
    read before any work, so a missing or undecodable file fails at once, naming it. device: where the network
    runs (default: $ABLATE_DEVICE, else CUDA when available)."""
    from ablate.analysis import attribute, mask_stages, probe
    from ablate.analysis.plots import captum_panel, mask_gallery
    from resmasknet import load_checkpoint
    from resmasknet.evaluate import predict
    from resmasknet.runtime import resolve_device

    dev = resolve_device(device)
    loaded = [(Path(p), read_image(p)) for p in images]
    model, _ = load_checkpoint(checkpoint)
    model.to(dev).eval()  # probe and attributions run where the model is
    detected = [detect_face(img) for _, img in loaded]
    faces = np.stack([f for f, _ in detected])
    notes = face_notes([p for p, _ in loaded], [b for _, b in detected])
    pred0 = predict(model, faces).argmax(dim=1).cpu().numpy()  # no true labels: the probe groups by the prediction
    pr = probe(model, faces, pred0, max_keep=len(faces), progress=progress)
    classes = list(pr.classes)
    probs = pd.DataFrame(pr.probs, columns=classes)
    probs.insert(0, "prediction", [classes[i] for i in pr.preds])
    probs.insert(0, "image", [str(p) for p, _ in loaded])
    dest = Path(out)
    with atomic_dir(dest) as tmp:
        page = Page(f"ablate explain: {Path(checkpoint).name}", tmp)
        page.p(f"checkpoint {Path(checkpoint).resolve()}", "note")
        page.h("Faces and class probabilities")
        page.ul(notes)
        page.table(probs, floatfmt="{:.3f}")
        fig, arr = faces_strip(faces, [classes[i] for i in pr.preds])
        page.figure(fig, arr, "faces", "the 48-px faces given to the model")
        page.h("Masks per stage")
        stages = mask_stages(model)
        if not stages:
            page.p("this model has no mask stages", "note")
        for st in stages:
            fig, arr = mask_gallery(pr, faces, st.stage, n=len(faces))
            page.figure(fig, arr, f"mask_{st.name}", f"{st.name}: native resolution and over the face")
        page.h("Attributions")
        attrs = attribute(model, faces, None, methods=[m for m in methods if m != "mask_attr" or stages],
                          progress=progress)
        fig, arr = captum_panel(faces, attrs, n=len(faces))
        page.figure(fig, arr, "attributions", "Captum attributions for the predicted class")
        page.write()
        probs.to_csv(tmp / "probabilities.csv", index=False)
    return dest / "index.html"
