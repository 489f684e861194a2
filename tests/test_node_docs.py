from pathlib import Path

from graph_executor.node_docs import nodes_markdown
from graph_executor.registry import load_node_library
from matrl.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "nodes.md"


def test_docs_nodes_md_is_generated_from_the_current_schemas():
    assert DOC.read_text() == nodes_markdown(), "docs/nodes.md is stale: run `matrl nodes doc -o docs/nodes.md`"


def test_every_node_type_and_parameter_is_documented():
    text = nodes_markdown()
    for name, spec in load_node_library().items():
        assert f"### `{name}`" in text
        for p in spec.params:
            assert f"| `{p.name}` |" in text


def test_cli_writes_the_doc(tmp_path):
    out = tmp_path / "nodes.md"
    assert main(["nodes", "doc", "-o", str(out)]) == 0
    assert out.read_text() == nodes_markdown()
