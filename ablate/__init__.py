"""ablate: ablation studies, sweeps, statistics and mask analysis for ResMaskingNet."""

__version__ = "0.1.0"
