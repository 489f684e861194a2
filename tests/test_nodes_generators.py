"""Noise and pattern generators: range, determinism, batching, seamless tiling, and node-specific behaviour."""

from __future__ import annotations

import random

import pytest
import torch

from graph_executor.executor import NodeContext, Plan
from graph_executor.ir import parse_graph
from graph_executor.nodes._cells import CellGrid, cell_random, cellular_features
from graph_executor.schema import ParamKind
from graph_executor.registry import load_node_library

NOISES = ("perlin_fbm", "value_fbm", "ridged_fbm", "clouds", "anisotropic_noise", "worley", "voronoi_cells",
          "white_noise", "scratches")
PATTERNS = ("bricks", "square_tiles", "hex_tiles", "checker", "stripes", "waves", "linear_gradient",
            "radial_gradient", "uniform_gray", "uniform_color", "scatter_shapes", "wood_rings", "weave")
GENERATORS = NOISES + PATTERNS
CONSTANT = ("uniform_gray", "uniform_color")
RES = 64
LIB = load_node_library()


def draw(spec, rng: random.Random) -> dict:
    """One random value per parameter of a node type, within its schema."""
    out = {}
    for s in spec.params:
        if s.kind is ParamKind.FLOAT:
            out[s.name] = rng.uniform(s.low, s.high)
        elif s.kind is ParamKind.INT:
            out[s.name] = rng.randint(int(s.low), int(s.high))
        elif s.kind is ParamKind.ENUM:
            out[s.name] = rng.choice(s.choices)
        elif s.kind is ParamKind.BOOL:
            out[s.name] = rng.random() < 0.5
        else:
            out[s.name] = [rng.uniform(s.low, s.high) for _ in range(s.components)]
    return out


def run(name: str, param_sets: list[dict], seeds: list[int], res: int = RES) -> dict[str, torch.Tensor]:
    """Evaluate one node type on a batch: parameters stacked by the executor, the node function called directly."""
    graph = parse_graph({"name": "t", "category": "test",
                         "nodes": {"gen": {"type": name}, "output": {"type": "output"}}})
    params = Plan(graph).stack([{"gen": ps} for ps in param_sets])["gen"]
    ctx = NodeContext(res, len(param_sets), torch.device("cpu"), torch.tensor(seeds, dtype=torch.long), {})
    with torch.no_grad():
        return LIB[name].fn(ctx, {}, params)


def samples(name: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{name}-{seed}")
    return [draw(LIB[name], rng) for _ in range(n)]


def test_generators_are_registered_as_source_nodes():
    for name in GENERATORS:
        spec = LIB[name]
        assert spec.category == ("noise" if name in NOISES else "pattern")
        assert spec.inputs == {}, name
    assert len(GENERATORS) >= 20


@pytest.mark.parametrize("name", GENERATORS)
def test_outputs_are_finite_in_range_and_not_constant(name):
    spec = LIB[name]
    defaults = run(name, [{}, {}], [3, 4])
    for port, img in defaults.items():
        channels = 3 if spec.outputs[port].value == "color" else 1
        assert img.shape == (2, channels, RES, RES), (name, port)
        if name not in CONSTANT:
            assert img.flatten(1).std(1).min() > 1e-3, f"{name}.{port} is constant at defaults"
    for img in run(name, samples(name, 4), [0, 1, 2, 3]).values():
        assert torch.isfinite(img).all()
        assert img.min() >= 0.0 and img.max() <= 1.0


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_and_batch_equals_single_runs(name):
    sets, seeds = samples(name, 4, seed=1), [11, 12, 13, 14]
    batch = run(name, sets, seeds)
    again = run(name, sets, seeds)
    for port in batch:
        assert torch.equal(batch[port], again[port]), f"{name}.{port} is not deterministic"
    for i in range(len(sets)):
        single = run(name, [sets[i]], [seeds[i]])
        for port in batch:
            torch.testing.assert_close(single[port][0], batch[port][i], atol=1e-5, rtol=0,
                                       msg=f"{name}.{port}: sample {i} differs from its single run")


def _seam_stands_out(img: torch.Tensor) -> list[str]:
    """Compare the wrap-around difference with the neighbour differences inside the image, per sample and axis.

    The seam may be as sharp as the sharpest interior line (patterns put cell edges on it), but
    not sharper: a pattern that does not wrap shows a cut there that no interior line matches.
    """
    bad = []
    for axis, label in ((-1, "columns"), (-2, "rows")):
        x = img.movedim(axis, -1)  # neighbours along the last axis
        inner = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2))  # (B, RES-1): per column pair
        seam = (x[..., 0] - x[..., -1]).abs().mean(dim=(1, 2))  # (B,)
        limit = 1.25 * inner.max(1).values + 0.02
        for b in torch.nonzero(seam > limit).flatten().tolist():
            bad.append(f"{label} sample {b}: seam {seam[b]:.3f} > {limit[b]:.3f}")
    return bad


@pytest.mark.parametrize("name", GENERATORS)
def test_tiles_seamlessly(name):
    sets = [{}] + samples(name, 5, seed=2)
    for port, img in run(name, sets, list(range(len(sets)))).items():
        assert not _seam_stands_out(img), (name, port, _seam_stands_out(img))


@pytest.mark.parametrize("name,port,params", [("perlin_fbm", "out", {"scale": 3}),
                                              ("worley", "f1", {"scale": 6}),
                                              ("wood_rings", "out", {"rings": 7})])
def test_seam_check_detects_patterns_that_do_not_wrap(name, port, params):
    """The tiling criterion fails on outputs that were cropped instead of wrapped.

    It is deliberately lenient with sharp lines, so piecewise-constant cell values are checked
    exactly elsewhere (brute-force cellular search over periodic copies, one value per brick/tile).
    """
    img = run(name, [params], [0], res=128)[port]
    assert _seam_stands_out(img[..., :100, :100])


@pytest.mark.parametrize("name", [n for n in GENERATORS if any(p.name == "seed" for p in LIB[n].params)])
def test_different_seeds_differ(name):
    base = run(name, [{}, {"seed": 1}], [5, 5])
    other_run = run(name, [{}], [6])
    # some ports (e.g. a tile mask) are pure geometry; every node has at least one random port
    assert any((img[0] - img[1]).abs().mean() > 1e-3 for img in base.values()), "seed param has no effect"
    assert any((img[0] - other_run[port][0]).abs().mean() > 1e-3 for port, img in base.items()), \
        "run seed has no effect"


@pytest.mark.parametrize("metric", [0, 1, 2])
@pytest.mark.parametrize("period,res", [(1, 64), (5, 64), (8, 64), (3, 128)])
def test_cellular_features_match_brute_force_with_wrap(metric, period, res):
    """With points inside the middle half of their cells the 3x3 search is exact; compare with all points."""
    seed = torch.tensor([17, 99])
    table = cell_random(seed, period, 3)
    table[..., :2] = 0.25 + 0.5 * table[..., :2]
    grid = CellGrid(res, period, torch.device("cpu"))
    f1, f2, value = cellular_features(grid, table[..., 0], table[..., 1], metric, table[..., 2])
    f1, f2, value = grid.to_pixels(f1)[:, 0], grid.to_pixels(f2)[:, 0], grid.to_pixels(value)[:, 0]
    u = (torch.arange(res) + 0.5) / res * period
    X, Y = u.view(1, -1).expand(res, res), u.view(-1, 1).expand(res, res)
    for b in range(2):
        dists, values = [], []
        for r in range(period):
            for c in range(period):
                for wy in (-1, 0, 1):  # feature points of the periodic copies around the image
                    for wx in (-1, 0, 1):
                        dx = (X - (c + table[b, r, c, 0] + wx * period)).abs()
                        dy = (Y - (r + table[b, r, c, 1] + wy * period)).abs()
                        d = [torch.sqrt(dx * dx + dy * dy), dx + dy, torch.maximum(dx, dy)][metric]
                        dists.append(d)
                        values.append(table[b, r, c, 2].expand(res, res))
        ordered, order = torch.stack(dists).topk(2, dim=0, largest=False)
        torch.testing.assert_close(f1[b], ordered[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(f2[b], ordered[1], atol=1e-5, rtol=0)
        if period > 1:
            nearest = torch.stack(values).gather(0, order[:1])[0]
            unique_nearest = (ordered[1] - ordered[0]) > 1e-5
            assert torch.equal(value[b][unique_nearest], nearest[unique_nearest])


@pytest.mark.parametrize("period,half_shift", [(1, 0), (3, 0), (8, 0), (13, 0), (32, 0), (3, 1), (8, 1), (13, 1)])
def test_cell_grid_block_layout_maps_back_to_pixel_coordinates(period, half_shift):
    res = 64
    grid = CellGrid(res, period, torch.device("cpu"), half_shift)
    P, w = period, grid.width
    cells = torch.arange(P, dtype=torch.float32)
    u = grid.to_pixels((cells.view(1, 1, 1, P, 1) + grid.fx).expand(1, P, w, P, w).contiguous())[0, 0]
    v = grid.to_pixels((cells.view(1, P, 1, 1, 1) + grid.fy).expand(1, P, w, P, w).contiguous())[0, 0]
    expected = ((torch.arange(res) + 0.5) * P / res - half_shift / 2) % P
    torch.testing.assert_close(u, expected.view(1, -1).expand(res, res), atol=1e-4, rtol=0)
    torch.testing.assert_close(v, expected.view(-1, 1).expand(res, res), atol=1e-4, rtol=0)


def test_bricks_have_one_random_value_per_brick_and_even_rows():
    out = run("bricks", [{"rows": 6, "columns": 4, "offset": 0.5}, {"rows": 5, "columns": 3, "row_jitter": 0.7},
                         {"rows": 6, "columns": 3, "row_jitter": 0.7}], [1, 2, 2])
    assert out["random"][0].unique().numel() == 6 * 4
    assert out["random"][1].unique().numel() == 6 * 3  # 5 rows are rounded up to 6
    torch.testing.assert_close(out["height"][1], out["height"][2])
    assert 0.7 < out["mask"][0].mean() < 0.97  # bricks with thin mortar


def test_square_and_hex_tiles_have_one_value_per_tile():
    sq = run("square_tiles", [{"tiles": 5}], [0])
    assert sq["random"].unique().numel() == 25
    hx = run("hex_tiles", [{"columns": 4}, {"columns": 7}], [0, 0])
    rows = [2 * round(c / 3 ** 0.5) for c in (4, 7)]
    assert hx["random"][0].unique().numel() == 4 * rows[0]
    assert hx["random"][1].unique().numel() == 7 * rows[1]


def test_voronoi_cell_values_are_piecewise_constant_with_edges_at_changes():
    out = run("voronoi_cells", [{"scale": 4}], [3])
    value, edges = out["out"][0, 0], out["edges"][0, 0]
    assert value.unique().numel() <= 16
    change = (value != torch.roll(value, 1, dims=1))
    assert edges[change].mean() > 0.6 > edges[~change].mean()


def test_white_noise_scale_sets_cell_count_and_is_capped_at_resolution():
    out = run("white_noise", [{"scale": 8}, {"scale": 512}], [0, 0])["out"]
    assert out[0].unique().numel() == 64
    assert out[1].unique().numel() > 0.99 * RES * RES
    assert abs(out[1].mean().item() - 0.5) < 0.02


def test_worley_f1_is_zero_at_points_and_edges_are_thin():
    out = run("worley", [{"scale": 4, "jitter": 0.0}], [0])
    f1 = out["f1"][0, 0]
    assert f1.min() < 0.05 and f1.max() > 0.5  # pixel centres sit half a pixel off the points
    assert (out["f2_f1"] < 0.05).float().mean() < 0.1


def test_stripes_follow_their_integer_direction():
    out = run("stripes", [{"kx": 0, "ky": 3}, {"kx": 2, "ky": 0}, {"kx": 0, "ky": 0}], [0, 0, 0])["out"]
    assert torch.equal(out[0], out[0][..., :1].expand_as(out[0]))  # horizontal stripes: rows constant
    assert torch.equal(out[1], out[1][..., :1, :].expand_as(out[1]))
    assert out[2].std() > 0.1  # (0, 0) falls back to one stripe along x


def test_linear_gradient_modes():
    out = run("linear_gradient", [{"mode": "saw"}, {"mode": "triangle"}], [0, 0])["out"][:, 0, 0]
    assert (out[0][1:] > out[0][:-1]).all()
    assert out[1].argmax() in (RES // 2 - 1, RES // 2)


def test_uniform_nodes_emit_their_value():
    assert torch.allclose(run("uniform_gray", [{"value": 0.25}], [0])["out"], torch.tensor(0.25))
    color = run("uniform_color", [{"color": [0.1, 0.5, 0.9]}], [0])["out"]
    torch.testing.assert_close(color[0, :, 5, 7], torch.tensor([0.1, 0.5, 0.9]))


@pytest.mark.parametrize("name", ["scatter_shapes", "scratches"])
def test_density_zero_gives_an_empty_image(name):
    assert run(name, [{"density": 0.0}], [0])["out"].max() == 0.0


def test_scatter_shapes_grow_with_size_and_cover_density():
    out = run("scatter_shapes", [{"size": 0.3, "softness": 0.0}, {"size": 0.9, "softness": 0.0},
                                 {"size": 0.9, "softness": 0.0, "density": 0.3}], [0, 0, 0])["out"]
    covered = (out > 0.1).float().flatten(1).mean(1)
    assert covered[0] < covered[1] and covered[2] < covered[1]
    for shape in ("square", "ring", "dome", "gaussian"):
        assert run("scatter_shapes", [{"shape": shape, "count": 4, "size": 1.0}], [0])["out"].max() > 0.5


def test_clouds_cover_controls_brightness():
    means = run("clouds", [{"cover": c} for c in (0.1, 0.5, 0.9)], [0, 0, 0])["out"].flatten(1).mean(1)
    assert means[0] < 0.3 < means[1] < 0.7 < means[2]


@pytest.mark.parametrize("name", ["anisotropic_noise", "wood_rings"])
def test_grain_direction(name):
    out = run(name, [{"direction": "horizontal"}, {"direction": "vertical"}], [0, 0])
    img = out["out"][:, 0]
    along_x = (img[..., 1:] - img[..., :-1]).abs().mean((1, 2))
    along_y = (img[:, 1:] - img[:, :-1]).abs().mean((1, 2))
    assert along_x[0] < 0.5 * along_y[0]  # horizontal grain varies slowly along x
    assert along_y[1] < 0.5 * along_x[1]


def test_fbm_contrast_is_steady_across_octaves():
    stds = [run("value_fbm", [{"octaves": o, "persistence": 0.8}], [0])["out"].std().item() for o in (1, 8)]
    assert 0.6 < stds[0] / stds[1] < 1.6


def test_weave_has_one_value_per_thread_and_patterns_differ():
    out = run("weave", [{"repeats": 2, "pattern": p, "thread_jitter": 0.0} for p in ("plain", "twill", "basket")],
              [0, 0, 0])
    assert out["random"][0].unique().numel() == 2 * 8  # 8 warp and 8 weft threads
    heights = out["height"]
    assert (heights[0] - heights[1]).abs().mean() > 0.05 and (heights[1] - heights[2]).abs().mean() > 0.05
    plain = heights[0, 0]
    torch.testing.assert_close(plain, plain.roll((RES // 8, RES // 8), dims=(0, 1)))  # one thread diagonally
