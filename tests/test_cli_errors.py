"""User errors in the CLI are one line on stderr naming the culprit and exit 2; anything else keeps its
traceback. Checkpoint problems are CheckpointErrors naming the file and the key or tensor."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from matrl.cli import main
from policy.checkpoint import CheckpointError, load_policy, read_checkpoint_info, save_checkpoint
from policy.model import MaterialPolicy, PolicyConfig
from policy.tokenizer import Vocabulary


def cli(argv: list[str]) -> int:
    """`matrl ARGV`'s exit status: main's return value, or argparse's exit for a bad argument."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


def render(tmp_path, *extra):
    return ["render", "red_bricks", "--res", "64", "-o", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("seed", [str(2 ** 70), "-1"])
def test_out_of_range_seed(tmp_path, capsys, seed):
    assert cli(render(tmp_path, "--seed", seed)) == 2
    assert "--seed" in one_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device, culprit", [("cuda", "CUDA is not available"), ("cuda:0", "CUDA"),
                                             ("banana", "not a torch device")])
def test_unusable_device(tmp_path, capsys, device, culprit):
    assert cli(render(tmp_path, "--device", device)) == 2
    line = one_line(capsys)
    assert "--device" in line and culprit in line
    assert not (tmp_path / "out").exists()


def test_unwritable_outputs_fail_before_any_work(tmp_path, a_file, capsys):
    under_a_file = a_file / "sub"
    commands = [
        ["render", "red_bricks", "--res", "64", "-o", str(under_a_file)],
        ["render", "red_bricks", "--res", "64", "-o", str(a_file)],
        ["graphs", "sheet", "--res", "64", "-o", str(under_a_file / "sheet.png")],
        ["graphs", "sheet", "--res", "64", "-o", str(tmp_path / "sheet.bogus")],
        ["nodes", "doc", "-o", str(under_a_file / "nodes.md")],
        ["gen-data", "--graphs", "red_bricks", "--per-graph", "4", "--res", "64", "--no-ray", "--out",
         str(under_a_file)],
    ]
    for argv in commands:
        assert cli(argv) == 2, argv
        line = one_line(capsys)
        assert str(a_file) in line or "sheet.bogus" in line, line


def test_bad_gen_data_settings_are_one_line(tmp_path, capsys):
    base = ["gen-data", "--graphs", "red_bricks", "--per-graph", "4", "--res", "64", "--no-ray"]
    assert cli([*base, "--out", str(tmp_path / "d"), "--shard-size", "0"]) == 2
    assert "shard_size" in one_line(capsys)
    assert cli([*base, "--out", str(tmp_path / "d"), "--seed", str(2 ** 64)]) == 2
    assert "--seed" in one_line(capsys)
    assert not (tmp_path / "d").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["render", "red_bricks"])
    assert info.value.code == 2
    assert "-o/--output" in one_line(capsys)
    assert cli(["render", "red_bricks", "-o", "x", "--res", "big"]) == 2
    assert "--res" in one_line(capsys)
    assert cli(["render", "red_bricks", "-o", "x", "--seed", "9" * 5000]) == 2
    assert "--seed" in one_line(capsys)


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import matrl.commands.nodes as nodes

    def broken(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(nodes, "_list", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["nodes", "list"])


# ---- serve-reward: every file is checked before Ray starts ------------------------------------------

@pytest.mark.parametrize("content, culprit", [("", "is empty"), (" \n\t\n", "is empty"), (None, "cannot read")])
def test_serve_reward_checks_the_token_file_before_starting_ray(tmp_path, capsys, content, culprit):
    import ray

    token = tmp_path / "token"
    if content is None:
        token.mkdir()
    else:
        token.write_text(content)
    assert cli(["serve-reward", "--port", "0", "--workers", "1", "--token-file", str(token)]) == 2
    line = one_line(capsys)
    assert str(token) in line and culprit in line
    assert not ray.is_initialized()


@pytest.mark.parametrize("text, culprit", [("res: [unclosed", "not valid YAML"), ("resolution: 64", "resolution"),
                                           (None, "cannot read")])
def test_serve_reward_checks_its_reward_config(tmp_path, capsys, text, culprit):
    import ray

    path = tmp_path / "reward.yaml"
    if text is not None:
        path.write_text(text)
    assert cli(["serve-reward", "--port", "0", "--workers", "1", "--reward-config", str(path)]) == 2
    line = one_line(capsys)
    assert str(path) in line and culprit in line
    assert not ray.is_initialized()


# ---- checkpoints -------------------------------------------------------------------------------------

SMALL = dict(image_token_dim=8, image_tokens=4, node_dim=8, node_layers=1, node_heads=2, max_depth=8, dim=16,
             layers=1, heads=2, mlp_ratio=1, max_slots=64)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    policy = MaterialPolicy(PolicyConfig(vocab=Vocabulary.from_registry().to_dict(), **SMALL))
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0001", policy, epoch=1, step=4)


def _edit_config(path, edit):
    data = json.loads((path / "config.json").read_text())
    edit(data)
    (path / "config.json").write_text(json.dumps(data))


def test_a_good_checkpoint_loads(checkpoint):
    policy, info = load_policy(checkpoint)
    assert (info.epoch, info.step, info.policy.dim) == (1, 4, 16)
    assert isinstance(policy, MaterialPolicy)


@pytest.mark.parametrize("edit, culprit", [
    (lambda d: d.pop("policy"), "missing key 'policy'"),
    (lambda d: d["policy"].pop("vocab"), "policy.vocab"),
    (lambda d: d["policy"].update(dim="wide"), "policy.dim"),
    (lambda d: d["policy"].update(heads=0), "policy.heads"),
    (lambda d: d["policy"].update(dropout=2.0), "policy.dropout"),
    (lambda d: d["policy"].update(colour=1), "policy.colour"),
    (lambda d: d["policy"]["vocab"].pop("node_types"), "policy.vocab"),
    (lambda d: d["policy"]["vocab"].update(params=7), "policy.vocab.params"),
    (lambda d: d.update(epoch="one"), "epoch"),
    (lambda d: d.update(metrics=[1]), "metrics"),
], ids=["no-policy", "no-vocab", "str-dim", "zero-heads", "dropout", "unknown-key", "no-node-types",
        "int-params", "str-epoch", "list-metrics"])
def test_malformed_config_json_names_file_and_key(checkpoint, edit, culprit):
    _edit_config(checkpoint, edit)
    for load in (read_checkpoint_info, load_policy):
        with pytest.raises(CheckpointError) as info:
            load(checkpoint)
        assert str(checkpoint / "config.json") in str(info.value) and culprit in str(info.value)


def test_config_json_that_is_not_json(checkpoint):
    for text in ("{not json", "[1, 2]", '{"format": ' + "[" * 50_000 + "]" * 50_000 + "}"):
        (checkpoint / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match="config.json"):
            load_policy(checkpoint)


def test_weights_that_do_not_fit_the_config_name_the_tensor(checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    _edit_config(other, lambda d: d["policy"].update(dim=32, heads=4))
    with pytest.raises(CheckpointError) as info:
        load_policy(other)
    message = str(info.value)
    assert str(other / "model.safetensors") in message and "shape" in message
    assert re.search(r"tensor '[\w.]+' has shape \([\d, ]*16\), but config.json builds \([\d, ]*32\)", message)
    _edit_config(other, lambda d: d["policy"].update(dim=16, heads=2, layers=2))
    with pytest.raises(CheckpointError, match=r"missing tensor.*blocks\.1\."):
        load_policy(other)
    _edit_config(other, lambda d: d["policy"].update(layers=1, node_layers=0))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*node"):
        load_policy(other)
    _edit_config(other, lambda d: d["policy"].update(node_layers=1, node_heads=-1))
    with pytest.raises(CheckpointError, match="policy.node_heads"):
        load_policy(other)
    (other / "model.safetensors").write_bytes(b"\x00" * 16)
    _edit_config(other, lambda d: d["policy"].update(node_heads=2))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy(other)


def test_pretrain_with_a_broken_checkpoint_to_resume_is_one_line(checkpoint, tmp_path, capsys):
    _edit_config(checkpoint, lambda d: d["policy"].pop("dim") and d["policy"].update(dims=16))
    run = checkpoint.parent.parent
    assert cli(["pretrain", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(run),
                 "--set", "train.device=cpu"]) == 2
    line = one_line(capsys)
    assert "config.json" in line and "policy.dims" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain_on_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert cli(["pretrain", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                 "--set", "train.device=cuda"]) == 2
    line = one_line(capsys)
    assert "train.device" in line and "CUDA is not available" in line


@pytest.mark.parametrize("text", ["{not json", '{"res": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"res": "x"}'],
                         ids=["malformed", "deep", "wrong-type"])
def test_pretrain_on_a_dataset_with_a_broken_manifest_is_one_line(tmp_path, capsys, text):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text(text)
    assert cli(["pretrain", "--config", "tiny", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r"),
                "--set", "train.device=cpu"]) == 2
    line = one_line(capsys)
    assert str(tmp_path / "ds" / "manifest.json") in line and "not a valid manifest" in line
