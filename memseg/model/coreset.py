"""A greedy k-center coreset: a few memory vectors that cover all of them.

Nearest memory matching compares every location of the input with every stored feature vector:
at 256 px and 30 memory images that is 122,880 vectors at layer1, ten times the inference time of
aligned matching (docs/quality.md, section 8). A coreset keeps ``size`` of them, chosen so that the
farthest stored vector from its nearest kept one is as close as a greedy pick can make it (the
k-center heuristic PatchCore subsamples its memory with): every kind of normal feature stays
represented, rare ones included, which a uniform draw would thin out. The cost of matching becomes
``locations x size`` per level, bounded whatever the image size and memory size.

The pick starts from the first vector, so the same memory always gives the same coreset (no random
stream; a checkpoint carries the kept indices anyway). See docs/model.md, "Memory module".
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def greedy_coreset(vectors: Tensor, size: int) -> Tensor:
    """Indices of ``size`` rows of ``vectors`` picked by greedy k-center (farthest point first).

    Args:
        vectors: ``(M, C)`` feature vectors.
        size: how many to keep; ``>= M`` keeps every row (``arange(M)``).

    Returns:
        ``(min(size, M),)`` int64 indices into ``vectors``, in the order picked.
    """
    if size < 1:
        msg = f"greedy_coreset: size must be at least 1, got {size}"
        raise ValueError(msg)
    count = int(vectors.shape[0])
    if size >= count:
        return torch.arange(count, device=vectors.device)
    vectors = vectors.float()
    # Squared distances as |v|^2 - 2 v.c + |c|^2: one matrix-vector product per pick instead of an
    # (M, C) difference tensor; the cancellation error only matters between near-equal candidates.
    norms = (vectors * vectors).sum(dim=1)
    closest = torch.full((count,), float("inf"), device=vectors.device)
    picked = torch.empty(size, dtype=torch.long, device=vectors.device)
    index = torch.zeros((), dtype=torch.long, device=vectors.device)
    for i in range(size):
        picked[i] = index
        center = vectors[index]
        distance = (norms - 2.0 * (vectors @ center) + norms[index]).clamp_(min=0.0)
        closest = torch.minimum(closest, distance)
        index = closest.argmax()
    return picked
