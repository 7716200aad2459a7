"""Drawing the explorer's view as one picture (PIL, not matplotlib: a 16-face view redraws in milliseconds),
with one colour scale per map kind shared by everything on screen, drawn as a colour bar with its numbers.

Rows are faces; columns are the face, then for each model compared its mask map (over the face or at the
stage's own resolution) and, when asked, its attribution. Under each map: the model's prediction, its
probability and a mark (right / wrong); beside the row: the flags that compare the models and, in a study, how
many seeds of each variant get the face right. `Rendered` keeps every map's values and the scale each was drawn
with, so tests (and users) can check what is on screen.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ablate.explorer._engine import Explorer
    from ablate.explorer._state import View

__all__ = ["Rendered", "colorize", "render", "to_html"]

CELL = 96  # pixels per panel
PAD = 4
TEXT_H = 26
SIDE_W = 230


@dataclass
class Panel:
    face: int
    column: str
    kind: str  # "face", "mask", "attribution"
    values: np.ndarray | None  # the map drawn (its own resolution), None for the face
    scale: tuple[float, float] | None
    box: tuple[int, int]  # top-left pixel of the panel in the picture
    caption: str = ""


@dataclass
class Rendered:
    png: bytes
    faces: np.ndarray
    scales: dict[str, tuple[float, float]]  # "mask" / "attribution" -> (vmin, vmax) (shared scale only)
    panels: list[Panel] = field(default_factory=list)
    title: str = ""
    notes: list[str] = field(default_factory=list)

    def image(self) -> Any:
        from PIL import Image

        return Image.open(io.BytesIO(self.png))

    def _repr_png_(self) -> bytes:
        return self.png


def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """uint8 RGB [h, w, 3] of `values` mapped linearly from [vmin, vmax] (clipped) through matplotlib's `cmap`."""
    from matplotlib import colormaps

    span = vmax - vmin
    t = np.clip((values - vmin) / span, 0.0, 1.0) if span > 0 else np.full(values.shape, 0.5)
    rgba = colormaps[cmap](t)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(a)
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def _upsample(values: np.ndarray, size: int) -> np.ndarray:
    """A map [h, w] resized to the face (bilinear, float)."""
    from PIL import Image

    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def _scale(maps: list[np.ndarray | None], declared: list[float] | None) -> tuple[float, float]:
    if declared is not None:
        return float(declared[0]), float(declared[1])
    finite = [m[np.isfinite(m)] for m in maps if m is not None and np.isfinite(m).any()]
    if not finite:
        return 0.0, 1.0
    allv = np.concatenate([f.ravel() for f in finite])
    return float(allv.min()), float(allv.max())


def _panel_rgb(ex: Explorer, v: View, face: int, values: np.ndarray, scale: tuple[float, float],
               overlay: bool) -> np.ndarray:
    """The RGB panel of one map: at its own resolution (nearest) or over the face (bilinear, blended)."""
    h = ex.faces.images.shape[1]
    if not overlay:
        return _resize(colorize(values, *scale, v.cmap), CELL, nearest=True)
    up = values if values.shape[0] == h else _upsample(values, h)
    rgb = colorize(up, *scale, v.cmap).astype(np.float32)
    grey = np.repeat(ex.faces.images[face][..., None], 3, axis=2).astype(np.float32)
    blend = (1 - v.opacity) * grey + v.opacity * rgb
    return _resize(blend.round().astype(np.uint8), CELL, nearest=False)


def render(ex: Explorer, v: View) -> Rendered:
    from PIL import Image, ImageDraw

    faces = ex.select(v)
    cols = [ex.columns[c] for c in v.columns]
    explain = v.explain != "none"
    per_col = 1 + int(explain)
    n_panels = 1 + per_col * len(cols)
    maps: dict[tuple[int, str], np.ndarray | None] = {}
    attrs: dict[str, dict[int, np.ndarray]] = {}
    for col in cols:
        for f in faces:
            maps[(int(f), col.label)] = ex.mask_map(col, int(f), v)
        if explain and len(faces):
            attrs[col.label] = ex.attribution(col, faces, v)
    scales: dict[str, tuple[float, float]] = {}
    if v.scale == "shared":
        scales["mask"] = _scale(list(maps.values()), v.scale_range)
        if explain:
            scales["attribution"] = _scale([a for d in attrs.values() for a in d.values()], None)
    width = PAD + n_panels * (CELL + PAD) + SIDE_W
    header = 34
    legend = 46 * (1 + int(explain))
    height = header + max(len(faces), 1) * (CELL + TEXT_H + PAD) + legend
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(12), _font(10)
    stage_txt = f"mask{v.stage} {v.reduction}" + (f" ch{v.channel}" if v.reduction == "channel" else "") + \
        (f" top{v.topk}" if v.reduction == "topk" else "") if v.stage else "no masks"
    n_cand = len(ex.candidates(v, with_stat=v.stat_range is not None or v.sort == "stat"))
    title = (f"{len(faces)} of {n_cand} faces (page {v.page + 1}); {stage_txt}, "
             f"{'native' if v.native else 'over the face'}; scale {v.scale}")
    draw.text((PAD, 2), title, fill="black", font=font)
    x = PAD + CELL + PAD
    for col in cols:
        draw.text((x, 18), col.label[:26], fill="black", font=font)
        x += per_col * (CELL + PAD)
    panels: list[Panel] = []
    notes: list[str] = []
    t = ex.table()
    for r, f in enumerate(faces):
        f = int(f)
        y = header + r * (CELL + TEXT_H + PAD)
        face_rgb = _resize(np.repeat(ex.faces.images[f][..., None], 3, axis=2), CELL, nearest=False)
        img.paste(Image.fromarray(face_rgb), (PAD, y))
        true = ex.classes[ex.faces.labels[f]]
        draw.text((PAD, y + CELL + 1), f"#{int(ex.faces.index[f])} {true}", fill="black", font=small)
        panels.append(Panel(f, "", "face", None, None, (PAD, y)))
        x = PAD + CELL + PAD
        for col in cols:
            values = maps[(f, col.label)]
            pred = int(col.predictions[f])
            ok = pred == ex.faces.labels[f]
            cap = f"{ex.classes[pred]} {col.probabilities[f, pred]:.2f} {'right' if ok else 'wrong'}"
            if values is None:
                draw.rectangle([x, y, x + CELL, y + CELL], outline="#bbb")
                draw.text((x + 6, y + CELL // 2 - 6), "no mask here", fill="#888", font=small)
                panels.append(Panel(f, col.label, "mask", None, None, (x, y), cap))
            else:
                sc = scales.get("mask") or _scale([values], None)
                img.paste(Image.fromarray(_panel_rgb(ex, v, f, values, sc, overlay=not v.native)), (x, y))
                panels.append(Panel(f, col.label, "mask", values, sc, (x, y), cap))
            draw.text((x, y + CELL + 1), cap, fill="#070" if ok else "#b00", font=small)
            x += CELL + PAD
            if explain:
                a = attrs.get(col.label, {}).get(f)
                if a is not None:
                    sc = scales.get("attribution") or _scale([a], None)
                    img.paste(Image.fromarray(_panel_rgb(ex, v, f, a, sc, overlay=True)), (x, y))
                    panels.append(Panel(f, col.label, "attribution", a, sc, (x, y)))
                    tgt = v.target if v.target != "pred" else ex.classes[pred]
                    draw.text((x, y + CELL + 1), f"{v.explain} for {tgt}", fill="black", font=small)
                x += CELL + PAD
        # the comparison beside the row
        lines = []
        if len(cols) > 1:
            right = [bool(t.loc[f, f"{c.label}:correct"]) for c in cols]
            for i, c in enumerate(cols[1:], 1):
                if right[0] != right[i]:
                    lines.append(f"{'right' if right[0] else 'wrong'} in {cols[0].label},")
                    lines.append(f"  {'right' if right[i] else 'wrong'} in {c.label}")
        for col_name in [c for c in t.columns if c.startswith("right:")]:
            variant = col_name.split(":", 1)[1]
            n_seeds = sum(1 for r_ in ex.study.records.records if r_.variant == variant) if ex.study else 0
            lines.append(f"{variant}: {int(t.loc[f, col_name])}/{n_seeds} seeds right")
        draw.multiline_text((x + 4, y + 2), "\n".join(lines[:8]), fill="black", font=small, spacing=2)
    if not len(faces):
        draw.text((PAD, header + 10), "no face passes these filters", fill="#b00", font=font)
        notes.append("no face passes these filters")
    # colour bars with their numbers: what the colours mean
    y = height - legend + 6
    for kind, label in (("mask", f"{stage_txt}"), ("attribution", f"{v.explain}")):
        if kind == "attribution" and not explain:
            continue
        if kind in scales:
            lo, hi = scales[kind]
            bar = colorize(np.tile(np.linspace(lo, hi, 256), (12, 1)), lo, hi, v.cmap)
            img.paste(Image.fromarray(bar), (PAD + 170, y))
            draw.text((PAD, y), f"{label}: one scale", fill="black", font=small)
            draw.text((PAD + 170, y + 14), f"{lo:.4g}", fill="black", font=small)
            draw.text((PAD + 170 + 226, y + 14), f"{hi:.4g}", fill="black", font=small)
        else:
            draw.text((PAD, y), f"{label}: each image on its own scale (not comparable across images)",
                      fill="#b00", font=small)
        y += 44
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: a 16-face view redraws in ms
    return Rendered(buf.getvalue(), np.asarray(faces), scales, panels, title, notes)


def to_html(ex: Explorer, rendered: Rendered, whatif: Any = None) -> str:
    """A self-contained page (the picture inline, the view as JSON, the faces' predictions, the what-if table)
    that opens offline, without a kernel or a widget renderer."""
    b64 = base64.b64encode(rendered.png).decode()
    t = ex.table().loc[rendered.faces]
    keep = ["index", "true"] + [c for c in t.columns if ":" in c and c.split(":")[0] in ex.view.columns
                                and not c.endswith(":margin")]
    keep += [c for c in t.columns if c.startswith("right:")]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mask explorer</title>"
             "<style>body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;font-size:12px}"
             " td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
             f"<h2>{html.escape(rendered.title)}</h2>",
             f"<img alt='mask explorer view' src='data:image/png;base64,{b64}'>",
             "<h3>faces</h3>", t[keep].to_html(index=False, float_format=lambda x: f"{x:.3f}")]
    if whatif is not None and len(whatif):
        parts += ["<h3>what if</h3>", whatif.to_html(index=False, float_format=lambda x: f"{x:.3f}")]
    parts += ["<h3>view</h3>", f"<pre>{html.escape(json.dumps(ex.view.to_dict(), indent=1))}</pre></body></html>"]
    return "\n".join(parts)
