"""Self-contained HTML reports: a whole study (`build_report`, `ablate report`), one checkpoint's mask
analysis (`build_checkpoint_report`, `ablate analyse`) and single photos (`explain`, `ablate explain`).

Every page reads offline: figures are PNGs embedded as data URIs, each saved with its raw arrays in
``figures/``; CSS is inline; the folder is written elsewhere and renamed into place when complete.

Modules, one job each: `page` (the HTML page), `figures` (matplotlib figures), `narrative` ("What the masks
do"), `analysis_section` (the mask-analysis section and its profiles), `study`, `checkpoint` and `explain`
(the three reports). Trials are read only through `ablate.trial` (via `ablate.summary.summarize`).

Example:
    >>> from ablate.report import build_report
    >>> build_report(session, n_images=64, analysis="fast")      # reports/<study>/index.html
"""

from __future__ import annotations

from ablate.report.analysis_section import ANALYSIS_PROFILES, analysis_options
from ablate.report.checkpoint import CHECKPOINT_SECTIONS, build_checkpoint_report
from ablate.report.explain import explain
from ablate.report.study import SECTIONS, build_report, default_report_dir

__all__ = [
    "ANALYSIS_PROFILES",
    "CHECKPOINT_SECTIONS",
    "SECTIONS",
    "analysis_options",
    "build_checkpoint_report",
    "build_report",
    "default_report_dir",
    "explain",
]
