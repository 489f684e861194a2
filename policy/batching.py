"""Collate graphs of different structures (node and slot counts) into padded policy batches."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from policy.tokenizer import REL_PAD, REL_SELF, VALUE_BINS, GraphStructure


@dataclass
class PolicyBatch:
    """Padded structure tensors of B graphs, and optionally their target tokens.

    Padded nodes have type 0 and relate to nothing but themselves; padded slots have
    `slot_mask` False, admit only token 0 and must be ignored by losses.
    """

    node_types: torch.Tensor      # (B, N) long
    node_depth: torch.Tensor      # (B, N) long
    node_mask: torch.Tensor       # (B, N) bool, True for real nodes
    relations: torch.Tensor       # (B, N, N) long
    slot_node: torch.Tensor       # (B, S) long
    slot_param: torch.Tensor      # (B, S) long
    slot_component: torch.Tensor  # (B, S) long
    slot_mask: torch.Tensor       # (B, S) bool, True for real slots
    token_masks: torch.Tensor     # (B, S, 128) bool
    tokens: torch.Tensor | None = None  # (B, S) long targets, 0 at padding

    @property
    def size(self) -> int:
        return int(self.node_types.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.slot_node.shape[1])

    def to(self, device: str | torch.device) -> "PolicyBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def repeat_interleave(self, n: int) -> "PolicyBatch":
        """Each graph n times in a row (N samples per structure for rollouts)."""
        return replace(self, **{f.name: getattr(self, f.name).repeat_interleave(n, 0) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def select(self, index: torch.Tensor) -> "PolicyBatch":
        """Rows `index` (a LongTensor, repeats allowed, or a bool mask) of every field: B samples of a
        few structures are `collate(structures).select(group_of_each_sample)`, no per-sample padding."""
        return replace(self, **{f.name: getattr(self, f.name)[index.to(self.node_types.device)]
                                for f in fields(self) if getattr(self, f.name) is not None})

    def with_tokens(self, tokens: torch.Tensor) -> "PolicyBatch":
        if tuple(tokens.shape) != (self.size, self.num_slots):
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} for a batch of "
                             f"{(self.size, self.num_slots)} slots")
        return replace(self, tokens=tokens.to(self.slot_node.device, torch.long))


def collate(structures: Sequence[GraphStructure], tokens: Sequence[Sequence[int]] | None = None) -> PolicyBatch:
    """Pad B `GraphTokenizer.structure()`s (and their token lists, if given) into one batch."""
    if not structures:
        raise ValueError("cannot collate an empty list of graphs")
    if tokens is not None and len(tokens) != len(structures):
        raise ValueError(f"{len(tokens)} token lists for {len(structures)} graphs")
    b = len(structures)
    n = max(s.num_nodes for s in structures)
    s_max = max(s.num_slots for s in structures)
    long = dict(dtype=torch.long)
    out = PolicyBatch(
        node_types=torch.zeros(b, n, **long), node_depth=torch.zeros(b, n, **long),
        node_mask=torch.zeros(b, n, dtype=torch.bool),
        relations=torch.full((b, n, n), REL_PAD, **long),
        slot_node=torch.zeros(b, s_max, **long), slot_param=torch.zeros(b, s_max, **long),
        slot_component=torch.zeros(b, s_max, **long), slot_mask=torch.zeros(b, s_max, dtype=torch.bool),
        token_masks=torch.zeros(b, s_max, VALUE_BINS, dtype=torch.bool),
        tokens=torch.zeros(b, s_max, **long) if tokens is not None else None,
    )
    out.relations[:, torch.arange(n), torch.arange(n)] = REL_SELF
    out.token_masks[:, :, 0] = True
    for i, s in enumerate(structures):
        k, m = s.num_nodes, s.num_slots
        out.node_types[i, :k] = s.node_types
        out.node_depth[i, :k] = s.node_depth
        out.node_mask[i, :k] = True
        out.relations[i, :k, :k] = s.relations
        out.slot_node[i, :m] = s.slot_node
        out.slot_param[i, :m] = s.slot_param
        out.slot_component[i, :m] = s.slot_component
        out.slot_mask[i, :m] = True
        out.token_masks[i, :m] = s.token_masks
        if tokens is not None:
            row = torch.as_tensor(list(tokens[i]), dtype=torch.long)
            if row.shape[0] != m:
                raise ValueError(f"graph {i}: {row.shape[0]} tokens for {m} slots")
            if ((row < 0) | (row >= VALUE_BINS)).any() or (
                    m and not s.token_masks.gather(1, row.clamp(0, VALUE_BINS - 1)[:, None]).all()):
                raise ValueError(f"graph {i}: a token is not admitted by its slot's mask")
            out.tokens[i, :m] = row
    return out
