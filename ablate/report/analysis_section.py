"""The mask-analysis section shared by the study and checkpoint reports: run `ablate.analysis.analyse` on
one model with a named profile, save its tables and arrays, and put every figure and every table it returns
on the page. Tables are rendered generically (a title and the table), so a table the analysis adds shows up
without a change here; `TITLES` only gives the known ones a nicer heading and an order.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ablate.report.page import Page

__all__ = ["ANALYSIS_PROFILES", "analysis_options", "analysis_section", "analysis_tables"]

log = logging.getLogger(__name__)

ANALYSIS_PROFILES: dict[str, dict[str, Any]] = {
    # seconds on a CPU: the demo and tests
    "fast": {"methods": ("saliency", "gradcam", "mask_attr"), "steps": 5,
             "intervention_kinds": ("zero", "uniform"), "sanity_images": 4},
    # every method and intervention at coarser settings: 500 faces of a CPU preset in minutes on 2 cores
    "standard": {"steps": 10, "attribution_options": {"ig_steps": 16, "occlusion_window": 12,
                                                      "occlusion_stride": 12}},
    # analyse()'s own defaults: IG 32 steps, 8-px occlusion at stride 5, 20 deletion/insertion steps
    "full": {},
}

TITLES = {  # known tables first, in this order; any other table follows under its own name
    "stages": "per-stage mask statistics", "classes": "per-stage, per-class mask statistics",
    "interventions": "interventions", "agreement": "agreement (mask maps vs attributions)",
    "faithfulness": "faithfulness: deletion / insertion AUC", "localisation": "localisation (generated regions)",
    "sanity": "sanity checks (cascading randomisation): maps that survive it are flagged",
    "sanity_steps": "sanity checks per randomisation step", "attribution": "attribution maps (summary)",
    "timing": "analysis timing",
}

CAPTIONS = {
    "class_means": "per-class mean masks (true class)", "class_diffs": "per-class mean minus the all-class mean",
    "class_gain": "per-class mean effective gain ||x(1+m)||/||x||", "stage_summary": "statistics per stage",
    "captum_panel": "Captum attributions on the 48-px face", "mask_attr_panel": "attribution to each mask",
    "agreement": "mask vs attribution agreement (Spearman)", "interventions": "mask interventions",
    "faithfulness": "deletion / insertion curves", "localisation": "localisation against true regions",
    "sanity": "sanity checks: Spearman with the trained model's maps after each randomisation step",
}


def analysis_options(profile: str) -> dict[str, Any]:
    """Options for ``analyse`` by profile name (``fast``, ``standard``, ``full``)."""
    if profile not in ANALYSIS_PROFILES:
        raise ValueError(f"unknown analysis profile {profile!r}; choose from {sorted(ANALYSIS_PROFILES)}")
    return dict(ANALYSIS_PROFILES[profile])


def analysis_tables(res: Any) -> dict[str, pd.DataFrame]:
    """Every DataFrame the analysis returned: its ``tables`` (known names first), then any DataFrame attribute."""
    tables = {k: v for k, v in getattr(res, "tables", {}).items() if isinstance(v, pd.DataFrame)}
    ordered = {k: tables[k] for k in TITLES if k in tables}
    ordered.update({k: v for k, v in tables.items() if k not in ordered})
    for name, value in vars(res).items() if hasattr(res, "__dict__") else ():
        if isinstance(value, pd.DataFrame) and name not in ordered:
            ordered[name] = value
    return ordered


def _notes(res: Any) -> list[str]:
    notes = (getattr(res, "meta", None) or {}).get("notes") or []
    return [str(n) for n in ([notes] if isinstance(notes, str) else notes)]


def analysis_section(page: Page, model: Any, data: Any, *, label: str, n_images: int, profile: str,
                     progress: bool, prefix: str) -> Any:
    """Analyse ``model`` on ``data`` (a FaceData split) and render it under a level-3 heading ``label``.
    Tables and arrays go to ``<page folder>/analysis/<prefix>/``. Returns the `AnalysisResult`."""
    from tqdm.auto import tqdm

    from ablate.analysis import analyse

    log.info("mask analysis of %s (%s profile, up to %d images)", label, profile, n_images)
    res = analyse(model, data, n_images=n_images, progress=progress, **analysis_options(profile))
    res.save(page.folder / "analysis" / prefix, figures=False)
    meta = res.meta
    page.h(label, 3)
    seconds = (meta.get("seconds") or {}).get("total")
    page.p(f"{meta.get('n_images', '?')} test images"
           + (f", accuracy on them {100 * meta['accuracy']:.1f}%" if "accuracy" in meta else "")
           + f"; analysis ({profile} profile)" + (f" took {seconds:.0f} s" if seconds is not None else "")
           + f". Tables and arrays: analysis/{prefix}/.", "note")
    notes = _notes(res)
    if notes:
        page.ul(notes, "note")
    for name, make in tqdm(list(res.figures.items()), desc=f"figures {prefix}", disable=not progress):
        fig, arrays = make()
        cap = CAPTIONS.get(name, name.replace("mask_gallery_", "mask gallery, native resolution and over faces: "))
        page.figure(fig, arrays, f"{prefix}_{name}", f"{label}: {cap}")
    for name, df in analysis_tables(res).items():
        page.h(f"{label}: {TITLES.get(name, name.replace('_', ' '))}", 4)
        page.table(df)
    return res
