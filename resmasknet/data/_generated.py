"""Procedurally drawn faces whose classes differ only in known facial parts, with the ground-truth
map of those parts: the built-in dataset of a fresh machine, and the yardstick for mask
localisation (a mask that "looks at the evidence" should overlap `regions`).

Each face is drawn from signed distances in its own coordinate frame (u to the face's right,
v down, one unit = half the face height), for a whole batch at once on numpy grids; a per-face
similarity transform (shift, scale, in-plane rotation, yaw squash) maps pixels into that frame, so
the images and the evidence maps share exactly the same geometry.

Classes (FER2013 names and order) and the parts that carry their evidence (`EVIDENCE`):

    angry    brows lowered into a V, eyes narrowed, mouth pressed tight or teeth bared
    disgust  eyes narrowed, nose wrinkled, mouth in a one-sided sneer
    fear     brows raised and drawn together, eyes wide, mouth stretched and parted
    happy    smiling mouth, closed or open with teeth
    sad      inner brows raised, mouth corners down
    surprise brows raised and arched, eyes wide, mouth open in an O
    neutral  flat closed mouth (the only part no other class shares)

Nuisances, so raw pixels are not enough: pose, scale, position, skin and hair tone, background
texture, lighting gradient, gamma, Gaussian noise, occluders (placed where they cover the least
evidence of the few candidate spots tried, so they mostly sit on non-evidence regions), expression
intensity and per-face geometry of every part.

One module of about 440 lines on purpose: the part shapes, the renderer and the evidence maps share one
face frame and one random stream (its order is part of the dataset's identity), so splitting them would
scatter what must change together. `resmasknet.data._baselines.baseline_check` measures that these
properties hold (a linear probe stays low, a small CNN learns); `python -m resmasknet.data [n]` runs it
and prints the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from resmasknet.data._core import CLASSES, DataError, FaceData

__all__ = ["EVIDENCE", "PARTS", "GeneratorConfig", "generate_faces", "save_examples"]

PARTS = ("brows", "eyes", "nose", "mouth")
EVIDENCE: dict[str, tuple[str, ...]] = {
    "angry": ("brows", "eyes", "mouth"),
    "disgust": ("eyes", "nose", "mouth"),
    "fear": ("brows", "eyes", "mouth"),
    "happy": ("mouth",),
    "sad": ("brows", "mouth"),
    "surprise": ("brows", "eyes", "mouth"),
    "neutral": ("mouth",),
}
_CHUNK = 256  # faces per numpy pass; part of the random stream (render noise is drawn per chunk)

# Per-class part shapes (face units). Brows: inner and outer height offsets (negative = raised),
# arch (negative = middle raised). Eyes: half-height. Mouth: half-width, corner curvature k
# (negative = corners up), tilt, upper/lower opening, lip thickness, opening squareness q.
# Two variants per class (drawn 50/50) keep one class from being a single template.
_NEUTRAL = dict(hi=0.0, ho=0.0, arch=-0.025, eye=0.062, w=0.25, k=0.0, tilt=0.0, hu=0.0, hl=0.0, th=0.05, q=2.0)
_VARIANTS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "angry": (
        dict(hi=0.10, ho=-0.05, arch=0.0, eye=0.028, w=0.17, k=0.02, th=0.09),
        dict(hi=0.10, ho=-0.05, arch=0.0, eye=0.028, w=0.21, hu=0.055, hl=0.06, q=6.0, teeth=1.0),
    ),
    "disgust": (
        dict(eye=0.032, w=0.21, k=0.05, tilt=0.075, hu=0.03, hl=0.012, wrinkle=1.0),
        dict(eye=0.032, w=0.21, k=0.05, tilt=-0.075, hu=0.03, hl=0.012, wrinkle=1.0),
    ),
    "fear": (
        dict(hi=-0.12, ho=-0.04, arch=0.0, eye=0.105, w=0.31, k=0.035, hu=0.02, hl=0.05, q=4.0, th=0.045),
        dict(hi=-0.12, ho=-0.04, arch=0.0, eye=0.105, w=0.31, k=0.035, hu=0.02, hl=0.05, q=4.0, th=0.045, teeth=1.0),
    ),
    "happy": (
        dict(w=0.27, k=-0.14, th=0.055),
        dict(w=0.28, k=-0.12, hl=0.11, teeth=1.0),
    ),
    "sad": (
        dict(hi=-0.09, ho=0.05, arch=0.0, w=0.23, k=0.12, th=0.055),
        dict(hi=-0.09, ho=0.05, arch=0.0, w=0.21, k=0.10, th=0.05),
    ),
    "surprise": (
        dict(hi=-0.12, ho=-0.10, arch=-0.07, eye=0.11, w=0.12, hu=0.12, hl=0.14, th=0.04),
        dict(hi=-0.12, ho=-0.10, arch=-0.07, eye=0.11, w=0.14, hu=0.10, hl=0.15, th=0.04),
    ),
    "neutral": (dict(), dict(w=0.23, th=0.06)),
}
_SHAPE_KEYS = ("hi", "ho", "arch", "eye", "w", "k", "tilt", "hu", "hl", "th", "q", "teeth", "wrinkle")


@dataclass(frozen=True)
class GeneratorConfig:
    """Size of the dataset and strength of each nuisance. The defaults are tuned so a linear
    classifier on raw pixels stays far below 60% (37% measured at n=6000) while a small CNN
    exceeds 90% (97%): see `baseline_check`."""

    n: int = 6000
    seed: int = 0
    size: int = 48
    rotation: float = 15.0  # max |in-plane rotation|, degrees
    shift: float = 0.08  # max |translation|, fraction of the image side
    scale: float = 0.12  # max relative change of face size
    yaw: float = 0.3  # max yaw (horizontal squash and feature shift)
    noise: float = 0.06  # max Gaussian noise sigma, fraction of full range
    lighting: float = 0.35  # max strength of the lighting gradient
    occlusion: float = 0.5  # probability of an occluder
    expression: float = 0.7  # minimum expression intensity (1 = every face at full strength)

    def __post_init__(self) -> None:
        if self.n < 1 or self.size < 16:
            raise DataError(f"generated: need n >= 1 and size >= 16, got n={self.n}, size={self.size}")
        if not 0 < self.expression <= 1:
            raise DataError(f"generated: expression must be in (0, 1], got {self.expression}")


def _class_tables() -> dict[str, np.ndarray]:
    """Shape parameters as [7 classes, 2 variants] arrays, neutral values filled in."""
    tables = {key: np.zeros((len(CLASSES), 2), np.float32) for key in _SHAPE_KEYS}
    for c, name in enumerate(CLASSES):
        for v, variant in enumerate(_VARIANTS[name]):
            full = {**_NEUTRAL, "teeth": 0.0, "wrinkle": 0.0, **variant}
            for key in _SHAPE_KEYS:
                tables[key][c, v] = full[key]
    return tables


def _draw_params(cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels, split and every per-face random parameter, drawn up front from one generator
    (render-time noise and textures come from one generator per chunk, seeded from the same seed)."""
    rng = np.random.default_rng(cfg.seed)
    n, k = cfg.n, len(CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    # Class-balanced 80/10/10 split: rank each face within its class.
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    frac = rank / counts[labels]
    split = np.where(frac < 0.8, 0, np.where(frac < 0.9, 1, 2)).astype(np.int8)

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(np.float32)

    p: dict[str, np.ndarray] = {}
    tables = _class_tables()
    variant = rng.integers(0, 2, n)
    t = u(cfg.expression, 1.0)  # expression intensity: interpolate from the neutral face
    for key in _SHAPE_KEYS:
        value = tables[key][labels, variant]
        if key in _NEUTRAL and key != "q":  # q (mouth squareness) is a shape, not an amount
            value = _NEUTRAL[key] + t * (value - _NEUTRAL[key])
        p[key] = value.astype(np.float32)
    p["tilt"] *= u(0.7, 1.3)
    # pose and framing
    p["cx"], p["cy"] = u(-cfg.shift, cfg.shift), u(-cfg.shift, cfg.shift) + 0.03
    p["scale"] = u(1 - cfg.scale, 1 + cfg.scale)
    p["theta"] = np.deg2rad(u(-cfg.rotation, cfg.rotation))
    p["yaw"] = u(-cfg.yaw, cfg.yaw)
    # face geometry
    p["head_a"], p["head_b"], p["chin"] = u(0.72, 0.84), u(0.98, 1.08), u(0.1, 0.25)
    p["eye_x"], p["eye_y"], p["eye_w"] = u(0.29, 0.34), u(-0.16, -0.08), u(0.115, 0.145)
    p["brow_gap"], p["brow_t"] = u(0.17, 0.22), u(0.055, 0.085)
    p["nose_y"], p["mouth_y"], p["mouth_w"] = u(0.17, 0.24), u(0.41, 0.5), u(0.88, 1.12)
    p["gaze"] = u(-0.03, 0.03)
    p["hairline"], p["hair_p"] = u(-0.85, -0.55), u(0, 1)
    # tones and lighting
    p["skin"], p["shade"] = u(0.35, 0.85), u(0.1, 0.35)
    p["feat"] = u(0.45, 0.8)  # feature darkness relative to the skin
    p["hair"] = np.where(u(0, 1) < 0.8, u(0.03, 0.35), u(0.55, 0.9)).astype(np.float32)
    p["bg"], p["bg_tex"] = u(0.05, 0.95), u(0.0, 0.25)
    p["light"], p["light_dir"] = u(0, cfg.lighting), u(0, 2 * np.pi)
    p["gamma"] = np.exp(u(-0.25, 0.25))
    p["noise"] = u(0, cfg.noise)
    p["teeth_tone"] = u(0.7, 0.95)
    # occluder: bar or blob, colour, size, angle
    p["occ"] = (u(0, 1) < cfg.occlusion).astype(np.float32)
    p["occ_bar"] = (u(0, 1) < 0.5).astype(np.float32)
    p["occ_tone"], p["occ_len"], p["occ_wid"] = u(0, 1), u(0.15, 0.45), u(0.03, 0.08)
    p["occ_rx"], p["occ_ry"], p["occ_ang"] = u(0.05, 0.14), u(0.05, 0.14), u(0, np.pi)
    return labels, split, p


def _cov(d: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance (negative inside)."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _stroke(
    u: np.ndarray, v: np.ndarray, u0: Any, u1: Any, v0: Any, slope: Any, curve: Any, tilt: Any = 0.0
) -> np.ndarray:
    """Unsigned distance to the curve v = v0 + slope*t + curve*(4t(1-t)) + tilt, u in [u0, u1],
    t = (u - u0) / (u1 - u0): brows, lips and creases are all pieces of such parabolas."""
    span = u1 - u0
    t = np.clip((u - u0) / span, 0.0, 1.0)
    cv = v0 + slope * t + curve * 4 * t * (1 - t) + tilt
    dv = (slope + curve * 4 * (1 - 2 * t)) / span
    inside = np.abs(v - cv) / np.sqrt(1 + dv * dv)
    du = np.maximum(u0 - u, 0) + np.maximum(u - u1, 0)
    return np.where(du > 0, np.sqrt(du * du + (v - cv) ** 2), inside)


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [B, g, g] noise to [B, size, size] with two small matrix products."""
    g = low.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, g - 1)
    m = np.zeros((size, g), np.float32)
    m[np.arange(size), lo] += 1 - (pos - lo)
    m[np.arange(size), hi] += pos - lo
    return m @ low @ m.T


def _part_sdfs(
    q: dict[str, np.ndarray], shape: dict[str, Any], uf: np.ndarray, v: np.ndarray, au: np.ndarray
) -> dict[str, np.ndarray]:
    """Signed distances of the class-dependent parts (brows, eyes, mouth) for the given shape
    parameters: the face's own, or the neutral ones (for the evidence maps)."""
    out: dict[str, np.ndarray] = {}
    brow_y = q["eye_y"] - q["brow_gap"]
    d_brow = _stroke(au, v, 0.09, 0.46, brow_y + shape["hi"], shape["ho"] - shape["hi"], shape["arch"])
    t_out = np.clip((au - 0.09) / 0.37, 0, 1)
    out["brows"] = d_brow - 0.5 * q["brow_t"] * (1 - 0.35 * t_out)
    eu, ev = au - q["eye_x"], v - q["eye_y"]
    eh = shape["eye"]
    d_eye = (np.sqrt((eu / q["eye_w"]) ** 2 + (ev / eh) ** 2) - 1) * eh
    lid = np.where(ev < 0, np.float32(0.03), np.float32(0.018))
    out.update(eye=d_eye, eu=eu, ev=ev, lids=np.abs(d_eye) - lid / 2, eye_outer=d_eye - lid / 2)
    w = shape["w"] * q["mouth_w"]
    s = np.clip(uf / w, -1, 1)
    vm = v - q["mouth_y"]
    centre = shape["k"] * (s * s - 1 / 3) + shape["tilt"] * s
    d_line = _stroke(uf, vm, -w, w, 2 * shape["k"] / 3 - shape["tilt"], 2 * shape["tilt"], -shape["k"])
    s2 = s * s
    qq = shape["q"]
    opening = np.sqrt(1 - np.where(qq > 5, s2 * s2 * s2, np.where(qq > 3, s2 * s2, s2)))
    d_open = np.maximum(
        np.maximum(centre - shape["hu"] * opening - vm, vm - centre - shape["hl"] * opening), np.abs(uf) - w
    )
    is_open = (shape["hu"] + shape["hl"]) > 0.005
    d_lips = np.where(is_open, np.abs(d_open), d_line) - shape["th"] / 2
    mouth = np.where(is_open, np.minimum(d_open, d_lips), d_lips)
    out.update(open=d_open, is_open=np.asarray(is_open), lips=d_lips, mouth=mouth)
    return out


def _render(
    p: dict[str, np.ndarray], labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one batch: images float [B, S, S] in 0..1 and evidence maps bool [B, S, S]."""
    b = len(labels)
    q = {k: v.reshape(b, 1, 1) for k, v in p.items()}
    f32 = np.float32
    coords = (np.arange(size, dtype=f32) + f32(0.5)) - f32(size / 2)
    x, y = coords.reshape(1, 1, size), coords.reshape(1, size, 1)
    unit = f32(size / 2) * q["scale"]
    px = 1.0 / unit  # one pixel in face units
    dx, dy = x - q["cx"] * size, y - q["cy"] * size
    cos, sin = np.cos(q["theta"]), np.sin(q["theta"])
    squash = 1 - 0.35 * np.abs(q["yaw"])
    u = (cos * dx + sin * dy) / (unit * squash)
    v = (-sin * dx + cos * dy) / unit
    uf = u - 0.3 * q["yaw"]  # features slide towards the turned side; the outline does not
    au = np.abs(uf)

    # background: flat tone + two octaves of smooth texture
    tex = _upsample(rng.standard_normal((b, 4, 4), f32), size) + 0.5 * _upsample(
        rng.standard_normal((b, 11, 11), f32), size
    )
    img = np.clip(q["bg"] + q["bg_tex"] * tex, 0, 1)

    # neck, head (egg-shaped: narrower chin), shading
    neck = _cov(np.maximum(np.abs(u) - 0.4, 0.75 - v), px)
    img += neck * (0.8 * q["skin"] - img)
    a = q["head_a"] * (1 - q["chin"] * np.clip(v, 0, 1))
    r = np.sqrt((u / a) ** 2 + (v / q["head_b"]) ** 2)
    head = _cov((r - 1) * a, px)
    skin = q["skin"] * (1 - q["shade"] * np.minimum(r, 1) ** 2)
    img += head * (skin - img)
    # hair: above a curved hairline, inside a slightly larger head outline
    r_hair = np.sqrt((u / (q["head_a"] * 1.08)) ** 2 + (v / (q["head_b"] * 1.06)) ** 2)
    hair = _cov(np.maximum((r_hair - 1) * q["head_a"], v - (q["hairline"] + 0.3 * u * u)), px)
    hair *= (q["hair_p"] < 0.85).astype(f32)
    img += hair * (q["hair"] - img)

    dark = q["skin"] * (1 - q["feat"])  # feature tone
    shape = {k: q[k] for k in _NEUTRAL}
    sdf = _part_sdfs(q, shape, uf, v, au)

    # brows: parabola from inner to outer end, thinner towards the outside
    img += _cov(sdf["brows"], px) * (0.8 * dark - img)

    # eyes: almond (ellipse) with light sclera, dark iris, dark lids (upper lid heavier)
    d_eye, eu, ev = sdf["eye"], sdf["eu"], sdf["ev"]
    sclera = q["skin"] + 0.45 * (1 - q["skin"])
    img += _cov(d_eye, px) * (sclera - img)
    gaze = np.where(uf > 0, q["gaze"], -q["gaze"])
    d_iris = np.sqrt((eu - gaze) ** 2 + ev * ev) - np.minimum(0.052, 0.9 * q["eye"] + 0.02)
    img += _cov(np.maximum(d_iris, d_eye), px) * (0.6 * dark - img)
    img += _cov(sdf["lids"], px) * (dark - img)

    # nose: two nostrils and a faint base; disgust adds creases across the bridge
    d_nostril = (np.sqrt(((au - 0.065) / 0.035) ** 2 + ((v - q["nose_y"]) / 0.02) ** 2) - 1) * 0.02
    img += 0.8 * _cov(d_nostril, px) * (dark - img)
    base_u = np.maximum(np.abs(uf) - 0.08, 0)
    d_base = np.sqrt(base_u * base_u + (v - q["nose_y"] - 0.03) ** 2) - 0.012  # a short capsule
    img += 0.35 * _cov(d_base, px) * (dark - img)
    d_crease = np.full(img.shape, np.inf, f32)
    wr = np.flatnonzero(p["wrinkle"] > 0)  # only disgust faces: skip the work for the rest
    if wr.size:
        crease_y = q["eye_y"][wr, None] + np.array([0.09, 0.16, 0.23], np.float32).reshape(1, 3, 1, 1)
        d = _stroke(uf[wr, None], v[wr, None], -0.085, 0.085, crease_y, 0.0, -0.02).min(axis=1) - 0.012
        d_crease[wr] = d
        img[wr] += 0.85 * _cov(d, px[wr]) * (dark[wr] - img[wr])

    # mouth: centre curve with corner curvature k and tilt, optionally opened by a superellipse
    fill = np.where(q["teeth"] > 0, q["teeth_tone"], 0.5 * dark)
    img += np.where(sdf["is_open"], _cov(sdf["open"], px), 0) * (fill - img)
    img += _cov(sdf["lips"], px) * (0.85 * dark - img)

    # evidence: the pixels whose appearance depends on the class, i.e. each evidence part as drawn
    # here and as a neutral face would have it (a narrowed eye's evidence includes where the open
    # eye would be), one pixel wider than drawn
    part = {"brows": sdf["brows"].copy(), "eyes": sdf["eye_outer"].copy(), "nose": d_crease, "mouth": sdf["mouth"]}
    n = _NEUTRAL
    for name in ("brows", "eyes"):  # neutral shape only where the class uses the part
        idx = np.flatnonzero(np.isin(labels, [CLASSES.index(c) for c in CLASSES if name in EVIDENCE[c]]))
        qi = {k: q[k][idx] for k in ("eye_y", "brow_gap", "brow_t", "eye_x", "eye_w")}
        if name == "brows":
            d = _stroke(
                au[idx], v[idx], 0.09, 0.46, qi["eye_y"] - qi["brow_gap"] + n["hi"], n["ho"] - n["hi"], n["arch"]
            )
            d -= 0.5 * qi["brow_t"] * (1 - 0.35 * np.clip((au[idx] - 0.09) / 0.37, 0, 1))
        else:
            eu, ev = au[idx] - qi["eye_x"], v[idx] - qi["eye_y"]
            d = (np.sqrt((eu / qi["eye_w"]) ** 2 + (ev / n["eye"]) ** 2) - 1) * n["eye"] - 0.015
        part[name][idx] = np.minimum(part[name][idx], d)
    w = n["w"] * q["mouth_w"]
    d_line = _stroke(uf, v - q["mouth_y"], -w, w, 2 * n["k"] / 3, 0.0, -n["k"]) - n["th"] / 2
    part["mouth"] = np.minimum(part["mouth"], d_line)
    region = np.zeros(img.shape, bool)
    for name in PARTS:
        uses = np.array([name in EVIDENCE[c] for c in CLASSES])[labels].reshape(b, 1, 1)
        region |= uses & (part[name] < px)

    # occluder: of 4 random spots, the one covering the least evidence (scored on a coarse grid)
    cand = rng.uniform(0.1, 0.9, (b, 4, 2)).astype(f32) * size - size / 2
    oc = np.flatnonzero(p["occ"] > 0)
    if oc.size:
        o = {k: q[k][oc] for k in ("occ_ang", "occ_len", "occ_wid", "occ_rx", "occ_ry", "occ_bar", "occ_tone")}
        bar = o["occ_bar"] > 0
        cos_o, sin_o = np.cos(o["occ_ang"]), np.sin(o["occ_ang"])
        hx = np.where(bar, o["occ_len"], o["occ_rx"]) * size  # bars: rectangles; blobs: ellipses
        hy = np.where(bar, o["occ_wid"], o["occ_ry"]) * size

        def occluder(xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
            ou = np.abs(cos_o * (xs - cx) + sin_o * (ys - cy))
            ov = np.abs(cos_o * (ys - cy) - sin_o * (xs - cx))
            d = np.where(
                bar, np.maximum(ou - hx, ov - hy), (np.sqrt((ou / hx) ** 2 + (ov / hy) ** 2) - 1) * np.minimum(hx, hy)
            )
            return np.clip(0.5 - d, 0, 1)

        step = max(1, size // 16)
        coarse = region[oc, step // 2 :: step, step // 2 :: step]
        xs, ys = x[..., step // 2 :: step], y[:, step // 2 :: step]
        overlap = np.stack(
            [
                (occluder(xs, ys, cand[oc, j, 0, None, None], cand[oc, j, 1, None, None]) * coarse).sum(axis=(1, 2))
                for j in range(cand.shape[1])
            ],
            axis=1,
        )
        best = cand[oc, np.argmin(overlap, axis=1)]
        cover = occluder(x, y, best[:, 0, None, None], best[:, 1, None, None])
        img[oc] += cover * (o["occ_tone"] - img[oc])
        region[oc] &= cover < 0.5

    # lighting gradient, gamma, sensor noise
    ramp = (np.cos(q["light_dir"]) * x + np.sin(q["light_dir"]) * y) / (size / 2)
    img *= 1 + q["light"] * ramp
    img = np.clip(img, 0, 1) ** q["gamma"]
    img += q["noise"] * rng.standard_normal(img.shape, f32)
    return np.clip(img, 0, 1), region


def generate_faces(config: GeneratorConfig | None = None, **options: Any) -> FaceData:
    """Generate the dataset (defaults n=6000, seed=0, size=48; 80/10/10 class-balanced split).

    Deterministic: the same config gives identical arrays. Options override config fields.
    """
    cfg = config or GeneratorConfig()
    if options:
        known = {f.name for f in fields(GeneratorConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"generated: unknown option(s) {unknown}; accepted: {sorted(known)}")
        cfg = GeneratorConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **options})
    labels, split, params = _draw_params(cfg)
    n, size = cfg.n, cfg.size
    images = np.empty((n, size, size), np.uint8)
    regions = np.empty((n, size, size), np.uint8)
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        sl = slice(start, min(start + _CHUNK, n))
        rng = np.random.default_rng([cfg.seed, 7, chunk])
        img, region = _render({k: v[sl] for k, v in params.items()}, labels[sl], size, rng)
        images[sl] = np.rint(img * 255)
        regions[sl] = region
    desc = ",".join(
        f"{f.name}={getattr(cfg, f.name)}"
        for f in fields(cfg)
        if f.name in ("n", "seed", "size") or getattr(cfg, f.name) != f.default
    )
    return FaceData(images, labels, split, CLASSES, f"generated ({desc})", regions=regions)


def save_examples(data: FaceData, path: str, *, per_class: int = 6, scale: int = 3) -> None:
    """Save a PNG grid: one row per class, each face next to its evidence overlay (red)."""
    from PIL import Image

    rows = []
    for c in range(len(data.classes)):
        idx = np.flatnonzero(data.labels == c)[:per_class]
        tiles = []
        for i in idx:
            g = np.repeat(data.images[i][..., None], 3, axis=2).astype(np.float32)
            over = g.copy()
            if data.regions is not None:
                m = data.regions[i].astype(bool)
                over[m] = 0.5 * over[m] + 0.5 * np.array([255, 0, 0], np.float32)
            tiles += [g, over, np.full((g.shape[0], 2, 3), 255, np.float32)]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate([np.pad(r, ((1, 1), (0, 0), (0, 0)), constant_values=255) for r in rows], axis=0)
    img = Image.fromarray(grid.astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    img.save(path)
