"""Image segmentation for the segmenting initializers: MDBSCAN ([AS-SMoE] section IV, V-A; see
:mod:`.mdbscan`), with its pixel loops in raw_kernels/mdbscan.cpp (:mod:`.build`)."""
from .mdbscan import AUTHORS_PEPPERS_COUNTS, GAUSS5, VARIANTS, mdbscan, prefilter, segment_stats, to_rgb8

__all__ = ["mdbscan", "segment_stats", "prefilter", "to_rgb8", "GAUSS5", "VARIANTS", "AUTHORS_PEPPERS_COUNTS"]
