"""Value tokens <-> parameter tensors for a whole batch at once, on any device.

`GraphTokenizer.tokenize`/`detokenize` and `Plan.stack` work parameter by parameter, sample by
sample, in Python: right for a few samples, ~2 ms per 100-parameter sample for online
pre-training, which makes thousands of samples per second on the training GPU. `TensorCodec` is
the same arithmetic as tensor ops over (n, slots):

* `quantise(values)` -> tokens, equal to `GraphTokenizer.tokenize` of the same values;
* `dequantise(tokens)` -> values at bin centres, equal to `GraphTokenizer.detokenize`;
* `param_tensors(values)` -> what `Plan.run` takes, equal to `Plan.stack(detokenize(tokens))`.

Values are (n, slots) float64 in slot order: enums as choice indices, bools 0/1. Equality with
the Python path is exact (same float64 operations in the same order, integer arithmetic for the
binned ints) and checked by `tests/test_online_data.py`.
"""

from __future__ import annotations

import torch

from graph_executor.executor import ParamTensors, Plan
from graph_executor.schema import ParamKind
from policy.tokenizer import VALUE_BINS, GraphTokenizer, _int_range

_BOOL, _ENUM, _INT_EXACT, _INT_BINNED, _CONTINUOUS, _CONSTANT = range(6)


class TensorCodec:
    """Batched quantisation and parameter tensors for one structure (see the module docstring)."""

    def __init__(self, tokenizer: GraphTokenizer, plan: Plan | None = None):
        self.tokenizer = tokenizer
        self.plan = plan or Plan(tokenizer.graph)
        kind, low, width, count = [], [], [], []
        for slot in tokenizer.slots:
            spec = slot.spec
            if spec.kind is ParamKind.BOOL:
                k, lo, w, c = _BOOL, 0, 0.0, 2
            elif spec.kind is ParamKind.ENUM:
                k, lo, w, c = _ENUM, 0, 0.0, len(spec.choices)
            elif spec.kind is ParamKind.INT:
                lo, hi = _int_range(spec)
                c = hi - lo + 1
                k, w = (_INT_EXACT if c <= VALUE_BINS else _INT_BINNED), 0.0
            else:
                lo, w, c = spec.low, spec.high - spec.low, VALUE_BINS
                k = _CONTINUOUS if w > 0 else _CONSTANT
            kind.append(k)
            low.append(float(lo))
            width.append(float(w))
            count.append(c)
        self._cpu = {"kind": torch.tensor(kind, dtype=torch.long),
                     "low": torch.tensor(low, dtype=torch.float64),
                     "width": torch.tensor(width, dtype=torch.float64),
                     "count": torch.tensor(count, dtype=torch.long)}
        # where each parameter of the plan takes its values: predicted ones from slots
        self._slots: dict[tuple[str, str], list[int]] = {}
        for slot in tokenizer.slots:
            self._slots.setdefault((slot.node, slot.param), []).append(slot.index)
        self._on: dict[torch.device, dict] = {}

    @property
    def num_slots(self) -> int:
        return len(self.tokenizer.slots)

    def _tensors(self, device: torch.device) -> dict:
        if device not in self._on:
            on = {k: v.to(device) for k, v in self._cpu.items()}
            on["base"] = self.plan.stack(batch=1, device=device)
            self._on[device] = on
        return self._on[device]

    def quantise(self, values: torch.Tensor) -> torch.Tensor:
        """(n, slots) float64 values -> (n, slots) long tokens (`tokenizer.quantise` per scalar)."""
        t = self._tensors(values.device)
        kind, low, width, count = t["kind"], t["low"], t["width"], t["count"]
        integral = values.round().long() - low.long()
        # int with more than 128 values: floor((v - low + 0.5) * 128 / count), in integers
        binned = ((2 * integral + 1) * VALUE_BINS).div(2 * count, rounding_mode="floor").clamp(max=VALUE_BINS - 1)
        continuous = torch.floor((values - low) / torch.where(width > 0, width, 1.0) * VALUE_BINS)
        continuous = continuous.clamp(0, VALUE_BINS - 1).long()
        tokens = torch.where(kind == _BOOL, (values != 0).long(), integral)  # enums: index; exact ints: v - low
        tokens = torch.where(kind == _INT_BINNED, binned, tokens)
        tokens = torch.where(kind == _CONTINUOUS, continuous, tokens)
        return torch.where(kind == _CONSTANT, torch.zeros_like(tokens), tokens)

    def dequantise(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, slots) tokens -> (n, slots) float64 values at bin centres (`tokenizer.dequantise`)."""
        t = self._tensors(tokens.device)
        kind, low, width, count = t["kind"], t["low"], t["width"], t["count"]
        tokens = tokens.long()
        exact = low + tokens
        binned = low + ((2 * tokens + 1) * count).div(2 * VALUE_BINS, rounding_mode="floor")
        continuous = low + (tokens + 0.5) / VALUE_BINS * width
        values = torch.where(kind == _INT_EXACT, exact, tokens.to(torch.float64))  # bools, enums
        values = torch.where(kind == _INT_BINNED, binned, values)
        values = torch.where(kind == _CONTINUOUS, continuous, values)
        return torch.where(kind == _CONSTANT, low.expand_as(values), values)

    def param_tensors(self, values: torch.Tensor) -> ParamTensors:
        """(n, slots) values -> `Plan.run`'s parameter tensors; parameters that are not predicted
        (seeds) keep the graph's values."""
        t = self._tensors(values.device)
        n = values.shape[0]
        out: ParamTensors = {}
        for node, params in t["base"].items():
            out[node] = {}
            spec_of = {p.name: p for p in self.plan.graph.nodes[node].spec.params}
            for name, base in params.items():
                slots = self._slots.get((node, name))
                if slots is None:
                    out[node][name] = base.expand(n, *base.shape[1:]).clone()
                    continue
                column = values[:, slots]
                kind = spec_of[name].kind
                if kind is ParamKind.BOOL:
                    out[node][name] = column[:, 0] != 0
                elif kind in (ParamKind.ENUM, ParamKind.INT):
                    out[node][name] = column[:, 0].round().long()
                elif kind is ParamKind.FLOAT:
                    out[node][name] = column[:, 0].float()
                else:
                    out[node][name] = column.float()
        return out
