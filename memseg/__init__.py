"""MemSeg: memory-based segmentation of industrial surface defects (Yang et al., 2022).

The pure library: data, anomaly synthesis, network, loss, training, metrics, inference.
It imports neither Ray nor MLflow (see docs/architecture.md).
"""

__version__ = "0.1.0"
