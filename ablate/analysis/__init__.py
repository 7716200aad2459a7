"""Mask and attribution analysis for ResMaskingNet: probes, Captum, interventions, faithfulness,
localisation and figures.

The pieces (each usable alone, all batched with bounded memory):

* :func:`probe` -> :class:`ProbeResult`: per-stage mask reductions that mean something for a
  softmax-over-channels mask (max, channel entropy, KL from uniform), the effective gain map,
  per-stage and per-class statistics and mean maps (:mod:`~ablate.analysis.masks`: the reductions
  and their orientation, "larger = attended more" for every map that is scored);
* :func:`attribute` -> :class:`AttributionResult`: IG, saliency, SmoothGrad, occlusion, DeepLift on
  the 48-px face, GradCAM at every stage, attribution to every mask;
* :func:`map_agreement`: mask maps vs attribution maps (Spearman, top-k IoU);
* :func:`intervene` -> :class:`InterventionResult`: replace a stage's mask (zero, uniform, shuffle,
  class mean) and measure the change;
* :func:`deletion_insertion` -> :class:`FaithfulnessResult`: deletion/insertion AUC of the
  explained class vs random (true-class AUCs beside them);
* :func:`localisation`: mass and pointing game against ground-truth regions (generated data), with
  each map's gain over the data prior and over random;
* :func:`sanity_checks` -> :class:`SanityResult`: cascading parameter randomisation (Adebayo et al.
  2018), Spearman per step, maps that survive it flagged;
* :mod:`ablate.analysis.plots`: figures that return (Figure, arrays); :func:`save_figure`.

:func:`analyse` (:mod:`~ablate.analysis.pipeline`) runs them all, sharing one forward pass per batch
(:mod:`~ablate.analysis.forward`), and returns an :class:`AnalysisResult`: plain dicts of pandas
tables, numpy arrays and figure-making functions, with ``save(folder)``. The report and ``ablate
explain`` build on that object. Generic helpers (devices, batching, resizing) are in
:mod:`~ablate.analysis.common`.

Example:
    >>> from resmasknet import create_model
    >>> from resmasknet.data import load_data
    >>> from ablate.analysis import analyse
    >>> d = load_data("generated:n=600,seed=0").select("test")
    >>> result = analyse(create_model("resmasknet_tiny").eval(), d, n_images=32)
    >>> result.tables["interventions"].head()
    >>> result.save("reports/analysis")
"""

from __future__ import annotations

from ablate.analysis.attribution import (
    DEFAULT_METHODS,
    INPUT_METHODS,
    LAYER_METHODS,
    UNAPPLIED_NOTE,
    AttributionResult,
    FaceModel,
    attribute,
    baseline_faces,
    input_attribution,
    layer_attribution,
    reused_modules,
)
from ablate.analysis.common import channels_last, predict_classes, upsample_maps
from ablate.analysis.faithfulness import FaithfulnessResult, auc, deletion_insertion
from ablate.analysis.forward import Reference, forward_after, shared_forward
from ablate.analysis.interventions import (
    DEFAULT_INTERVENTIONS,
    INTERVENTIONS,
    InterventionResult,
    intervene,
    replace_mask,
    replacement_mask,
)
from ablate.analysis.localisation import data_prior, localisation_scores, map_agreement, spearman_rows, topk_iou
from ablate.analysis.localisation import localisation as localisation
from ablate.analysis.masks import (
    ATTENDED,
    ORIENTATION,
    REDUCTIONS,
    MaskStage,
    gain_map,
    gini,
    mask_stages,
    reduce_mask,
    relative_change,
    spatial_entropy,
)
from ablate.analysis.pipeline import AnalysisResult, analyse
from ablate.analysis.plots import (
    agreement_plot,
    captum_panel,
    class_mean_grid,
    faithfulness_plot,
    intervention_plot,
    localisation_plot,
    mask_gallery,
    sanity_plot,
    save_figure,
    stage_summary_plot,
)
from ablate.analysis.probe import ProbeResult, probe
from ablate.analysis.sanity import SANITY_THRESHOLD, SanityResult, sanity_checks

#: Kept for ``ablate.report.explain``: (predicted classes, probabilities) through
#: ``resmasknet.evaluate.predict``. New code: ``resmasknet.evaluate.predict`` directly.
predict = predict_classes

__all__ = [
    "ATTENDED",
    "DEFAULT_INTERVENTIONS",
    "DEFAULT_METHODS",
    "INPUT_METHODS",
    "INTERVENTIONS",
    "LAYER_METHODS",
    "ORIENTATION",
    "REDUCTIONS",
    "SANITY_THRESHOLD",
    "UNAPPLIED_NOTE",
    "AnalysisResult",
    "AttributionResult",
    "FaceModel",
    "FaithfulnessResult",
    "InterventionResult",
    "MaskStage",
    "ProbeResult",
    "Reference",
    "SanityResult",
    "agreement_plot",
    "analyse",
    "attribute",
    "auc",
    "baseline_faces",
    "captum_panel",
    "channels_last",
    "class_mean_grid",
    "data_prior",
    "deletion_insertion",
    "faithfulness_plot",
    "forward_after",
    "gain_map",
    "gini",
    "input_attribution",
    "intervene",
    "intervention_plot",
    "layer_attribution",
    "localisation",
    "localisation_plot",
    "localisation_scores",
    "map_agreement",
    "mask_gallery",
    "mask_stages",
    "predict",
    "predict_classes",
    "probe",
    "reduce_mask",
    "relative_change",
    "replace_mask",
    "replacement_mask",
    "reused_modules",
    "sanity_checks",
    "sanity_plot",
    "save_figure",
    "shared_forward",
    "spatial_entropy",
    "spearman_rows",
    "stage_summary_plot",
    "topk_iou",
    "upsample_maps",
]
