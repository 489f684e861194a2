"""Generate docs/nodes.md from the node schemas, so the reference can never drift from the code."""

from __future__ import annotations

from graph_executor.schema import NodeSpec, ParamKind, ParamSpec
from graph_executor.registry import load_node_library


def _range(p: ParamSpec) -> str:
    if p.kind is ParamKind.ENUM:
        return ", ".join(p.choices)
    if p.kind is ParamKind.BOOL:
        return "true / false"
    if p.kind is ParamKind.INT:
        return f"{int(p.low)} … {int(p.high)}"
    span = f"{p.low:g} … {p.high:g}"
    return span if p.kind is ParamKind.FLOAT else f"{p.components} × [{span}]"


def _node_section(spec: NodeSpec) -> list[str]:
    ins = ", ".join(f"`{k}` ({v.value}{', optional' if k in spec.optional_inputs else ''})"
                    for k, v in spec.inputs.items()) or "none"
    outs = ", ".join(f"`{k}` ({v.value})" for k, v in spec.outputs.items())
    lines = [f"### `{spec.type}`", "", spec.doc or "", "", f"Inputs: {ins}. Outputs: {outs}.", ""]
    if spec.params:
        lines += ["| parameter | kind | range | default | predicted | gradient | notes |",
                  "|---|---|---|---|---|---|---|"]
        for p in spec.params:
            lines.append(f"| `{p.name}` | {p.kind.value} | {_range(p)} | `{p.default}` | "
                         f"{'yes' if p.predicted else 'no'} | {'yes' if p.differentiable else 'no'} | {p.doc} |")
        lines.append("")
    return lines


def nodes_markdown() -> str:
    registry = load_node_library()
    categories = sorted({s.category for s in registry.values()})
    predicted = sum(p.predicted for s in registry.values() for p in s.params)
    lines = ["# Node library", "",
             "Generated from the node schemas by `matrl nodes doc -o docs/nodes.md`; do not edit by hand.", "",
             f"{len(registry)} node types in {len(categories)} categories, {predicted} predicted parameters "
             "in all. Scalars are quantised into 128 bins over their range for the policy; every "
             "output tiles seamlessly. *gradient*: whether `matrl infer --refine` moves the parameter "
             "by gradient descent (floats, colours and vectors unless their effect is rounded, "
             "thresholded or hashed); the others are searched by MCMC.", ""]
    for category in categories:
        lines += [f"## {category}", ""]
        for name in sorted(n for n, s in registry.items() if s.category == category):
            lines += _node_section(registry[name])
    return "\n".join(lines).rstrip() + "\n"
