"""An exported graph behind the torch model's interface, so the torch inference code can drive it.

:func:`memseg.inference.predict_paths` (``memseg predict --backend onnx``) and
:func:`memseg.evaluation.predict_maps` call ``model.anomaly_map(x)``; this module answers that call
with an exported graph (onnxruntime or OpenVINO), so every backend goes through the same resizing,
scoring and file writing and writes the same files. Code that must run without torch uses
:mod:`memseg.export.runtime` or :mod:`memseg.export.openvino_runtime` directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memseg.export.runtime import ExportedAnomalyModel


class OnnxBackedModel(nn.Module):
    """``anomaly_map(x)`` computed by an exported graph (on the CPU; no parameters of its own)."""

    def __init__(self, runtime: ExportedAnomalyModel) -> None:
        super().__init__()
        self.runtime = runtime

    def anomaly_map(self, x: Tensor) -> Tensor:
        maps = self.runtime.predict_maps(x.detach().float().cpu().numpy(), batch_size=int(x.shape[0]))
        return torch.from_numpy(maps).to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.anomaly_map(x)
