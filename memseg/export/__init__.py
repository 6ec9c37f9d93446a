"""Deployment: the whole model as one ONNX graph, INT8 behind an accuracy gate, and a torch-free runtime.

- :mod:`memseg.export.onnx_graph`: ``MemSeg.anomaly_map`` (memory bank and map blur included) to ONNX.
- :mod:`memseg.export.runtime`: runs such a file with onnxruntime alone (importing it never imports torch).
- :mod:`memseg.export.quantize`: INT8 post-training static quantisation, calibrated on normal images.
- :mod:`memseg.export.gate`: the accuracy gate an INT8 graph must pass against its fp32 graph.
- :mod:`memseg.export.metadata`: the config, precision and gate figures a file carries.
- :mod:`memseg.export.release`: ``memseg export`` without the command line (export, calibrate, gate).
- :mod:`memseg.export.torch_adapter`: a graph behind ``MemSeg.anomaly_map``, for ``memseg predict``.

This package imports no torch at package level, so ``memseg.export.runtime`` works without torch.
See docs/export.md.
"""
