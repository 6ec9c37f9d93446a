"""The MemSeg network (docs/model.md): build it with :func:`create_model`."""

from memseg.model.factory import create_model
from memseg.model.memory_bank import MemoryBank, MemoryComparison, MemoryNotBuiltError
from memseg.model.memseg import MemSeg, MemSegOutputs

__all__ = ["MemSeg", "MemSegOutputs", "MemoryBank", "MemoryComparison", "MemoryNotBuiltError", "create_model"]
