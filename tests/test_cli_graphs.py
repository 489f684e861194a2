"""`matrl render` and `matrl graphs ...`: in-process round trips and one real console-script run."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from graph_executor.library import library_names
from matrl.cli import main

GRAPH = {
    "format": "matrl.graph/1", "name": "cli_test", "category": "test", "meta": {"description": "cli test"},
    "nodes": {
        "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
        "detail": {"type": "perlin_fbm", "params": {"scale": 16, "seed": 3}},
        "mix": {"type": "blend", "params": {"mode": "overlay", "opacity": 0.6},
                "inputs": {"foreground": "detail", "background": "noise"}},
        "lv": {"type": "levels", "params": {"gamma": 1.2}, "inputs": {"in": "mix"}},
        "nrm": {"type": "normal_from_height", "inputs": {"height": "lv"}},
        "out": {"type": "output", "inputs": {"basecolor": "lv", "normal": "nrm", "roughness": "noise", "height": "lv"}},
    },
}
OUTPUTS = ("basecolor", "normal", "roughness", "metallic", "height", "render")


@pytest.fixture
def graph_file(tmp_path):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(GRAPH))
    return path


def _pixels(path):
    return np.asarray(Image.open(path))


def test_render_writes_six_pngs_of_the_requested_size(graph_file, tmp_path):
    out = tmp_path / "out"
    assert main(["render", str(graph_file), "--res", "64", "--seed", "1", "-o", str(out)]) == 0
    for name in OUTPUTS:
        image = Image.open(out / f"{name}.png")
        assert image.size == (64, 64), name
        assert image.mode == ("RGB" if name in ("basecolor", "normal", "render") else "L"), name


def test_set_changes_the_output(graph_file, tmp_path):
    main(["render", str(graph_file), "--res", "64", "-o", str(tmp_path / "a")])
    main(["render", str(graph_file), "--res", "64", "-o", str(tmp_path / "b"), "--set", "lv.gamma=3.0",
          "--set", "mix.mode=multiply"])
    main(["render", str(graph_file), "--res", "64", "-o", str(tmp_path / "c")])
    assert np.array_equal(_pixels(tmp_path / "a/height.png"), _pixels(tmp_path / "c/height.png"))
    assert not np.array_equal(_pixels(tmp_path / "a/height.png"), _pixels(tmp_path / "b/height.png"))


@pytest.mark.parametrize("assignment, message", [
    ("lv.gamma=99", "node 'lv', parameter 'gamma': value 99 is outside"),
    ("lv.colour=1", "node 'lv', parameter 'colour': unknown parameter"),
    ("nowhere.gamma=1", "node 'nowhere'"),
    ("mix.mode=glow", "unknown choice 'glow'"),
    ("lvgamma=1", "must read node.param=value"),
])
def test_bad_set_is_a_clear_error(graph_file, tmp_path, capsys, assignment, message):
    code = main(["render", str(graph_file), "--res", "64", "-o", str(tmp_path / "x"), "--set", assignment])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_render_accepts_a_library_name(tmp_path):
    name = library_names()[0]
    assert main(["render", name, "--res", "64", "-o", str(tmp_path / "lib")]) == 0
    assert (tmp_path / "lib/render.png").is_file()


def test_validate_reports_the_graph_error_of_a_broken_file(graph_file, tmp_path, capsys):
    broken = json.loads(json.dumps(GRAPH))
    broken["nodes"]["mix"]["inputs"]["foreground"] = "ghost"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    assert main(["graphs", "validate", str(graph_file)]) == 0
    assert main(["graphs", "validate", str(graph_file), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "node 'mix': input 'foreground' references missing node 'ghost'" in captured.err
    assert "ok" in captured.out


def test_validate_flags_a_degenerate_graph(tmp_path, capsys):
    flat = json.loads(json.dumps(GRAPH))
    flat["nodes"]["lv"]["params"] = {"out_low": 0.5, "out_high": 0.5}
    flat["nodes"]["out"]["inputs"]["roughness"] = "lv"
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(flat))
    assert main(["graphs", "validate", str(path)]) == 1
    assert "degenerate" in capsys.readouterr().err


def test_list_and_show(capsys):
    assert main(["graphs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == library_names()
    assert main(["graphs", "show", rows[0]["name"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == rows[0]["name"]
    assert main(["graphs", "show", "no_such_graph"]) == 2
    assert "unknown library graph 'no_such_graph'" in capsys.readouterr().err


def test_stats_json_has_the_documented_keys(capsys):
    assert main(["graphs", "stats", "--json", "--draws", "1"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"graphs", "categories", "node_types", "median_nodes", "median_predicted_params",
                          "valid_random_fraction"}
    assert stats["graphs"] == len(library_names())
    assert 0.0 <= stats["valid_random_fraction"] <= 1.0


def test_sheet_draws_one_tile_per_graph(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["graphs", "sheet", "-o", str(out), "--res", "64", "--columns", "4"]) == 0
    rows = (len(library_names()) + 3) // 4
    assert Image.open(out).size == (4 * 64, rows * (64 + 14))


def test_console_script_renders(graph_file, tmp_path):
    exe = shutil.which("matrl")
    assert exe, "the matrl console script is not installed"
    out = tmp_path / "sub"
    result = subprocess.run([exe, "render", str(graph_file), "--res", "64", "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in OUTPUTS)
    bad = subprocess.run([exe, "render", str(graph_file), "-o", str(out), "--set", "lv.gamma=nan"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "parameter 'gamma'" in bad.stderr
