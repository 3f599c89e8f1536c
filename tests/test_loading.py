"""load_model sources, save_pretrained round trips, the published layout, and broken checkpoints."""

import json

import pytest
import torch

from tirex import CheckpointError, ModelConfig, TiRexModel, load_model
from tirex.checkpoint import to_reference_state_dict, write_reference_checkpoint
from tirex.config import DEFAULT_QUANTILE_LEVELS


def tiny(**kw):
    cfg = dict(embed_dim=16, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=64)
    cfg.update(kw)
    return TiRexModel(ModelConfig(**cfg))


def test_published_configuration_has_the_published_keys_and_shapes(fixture_dir):
    spec = json.loads((fixture_dir.parent / "tirex_official_state_dict_shapes.json").read_text())
    model = TiRexModel(ModelConfig())  # defaults are the published size
    ref = to_reference_state_dict(model.state_dict())
    assert {k: list(v.shape) for k, v in ref.items()} == spec["state_dict_shapes"]
    assert model.num_parameters == spec["n_params"] == 35_291_200


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    x = torch.randn(2, 100)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = load_model(tmp_path / "m")
    assert torch.equal(model.forecast(x, 40)[0], again.forecast(x, 40)[0])
    assert again.config == model.config


def test_published_layout_round_trip_and_folder(tmp_path, fixture_dir):
    model = load_model(fixture_dir / "official" / "model.ckpt")
    write_reference_checkpoint(model, tmp_path / "model.ckpt")
    for source in (tmp_path / "model.ckpt", tmp_path, fixture_dir / "official"):
        other = load_model(source)
        for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), k


def test_checkpoint_with_lightning_bookkeeping_and_extra_hparams(tmp_path, fixture_dir):
    ckpt = torch.load(fixture_dir / "official" / "model.ckpt", weights_only=True)
    ckpt.update(epoch=3, global_step=1000, pytorch_lightning_version="2.4.0", callbacks={})
    ckpt["hyper_parameters"]["something_new"] = {"a": 1}
    torch.save(ckpt, tmp_path / "model.ckpt")
    assert load_model(tmp_path / "model.ckpt").config.embed_dim == 128


def test_recurrence_dtype_override():
    model = tiny()
    model.set_recurrence_dtype("float32")
    assert all(b.slstm.recurrence_dtype == "float32" for b in model.blocks)
    with pytest.raises(ValueError, match="recurrence_dtype"):
        model.set_recurrence_dtype("float16")


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown model source"):
        load_model("./no/such/folder")
    with pytest.raises(ValueError, match="unknown model source"):
        load_model("not a repo id")


def test_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        load_model(tmp_path)


def test_truncated_and_corrupt_files(tmp_path, fixture_dir):
    data = (fixture_dir / "official" / "model.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.ckpt")
    tiny().save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "m")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path, fixture_dir):
    ckpt = torch.load(fixture_dir / "official" / "model.ckpt", weights_only=True)
    ckpt["payload"] = Evil()
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="refusing|corrupt"):
        load_model(tmp_path / "model.ckpt")


def test_config_errors(tmp_path):
    tiny().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["embed_dim"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing required keys"):
        load_model(tmp_path / "m")
    cfg["embed_dim"] = 16
    cfg["flux_capacitor"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown model config keys"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig(context_length=100)
    with pytest.raises(ValueError, match="quantile_levels"):
        ModelConfig(quantile_levels=(0.5, 0.1))


def test_missing_hparams_key(tmp_path, fixture_dir):
    ckpt = torch.load(fixture_dir / "official" / "model.ckpt", weights_only=True)
    del ckpt["hyper_parameters"]["train_ctx_len"]
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="train_ctx_len"):
        load_model(tmp_path / "model.ckpt")


def test_weights_of_the_wrong_shape(tmp_path):
    tiny().save_pretrained(tmp_path / "m")
    tiny(embed_dim=32).config.save(tmp_path / "m" / "config.json")
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(tmp_path / "m")


def test_default_quantile_levels_and_median():
    assert ModelConfig().quantile_levels == DEFAULT_QUANTILE_LEVELS
    assert ModelConfig().median_index == 4


# ---------------------------------------------------------------------------- issue 15: no silent wrong answers
def test_nan_in_the_weights_is_an_error_at_load(tmp_path, fixture_dir):
    """Item 2: a checkpoint with a NaN inside its weights loaded and returned all-NaN forecasts."""
    model = tiny()
    with torch.no_grad():
        model.blocks[0].ffn.up.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"'blocks.0.ffn.up.weight' holds 1 NaN/inf"):
        load_model(tmp_path / "m")
    ckpt = torch.load(fixture_dir / "official" / "model.ckpt", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("out_norm.weight"))
    ckpt["state_dict"][key][3] = float("inf")
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="NaN/inf"):
        load_model(tmp_path / "model.ckpt")


def test_unreadable_checkpoints_never_suggest_unpickling(tmp_path, fixture_dir):
    """Item 8: random bytes quoted torch's advice to retry with weights_only=False (unsafe)."""
    (tmp_path / "random-bytes.ckpt").write_bytes(bytes(range(256)) * 64)
    ckpt = torch.load(fixture_dir / "official" / "model.ckpt", weights_only=True)
    ckpt["payload"] = Evil()
    torch.save(ckpt, tmp_path / "evil.ckpt")
    for name, match in (("random-bytes.ckpt", "not a torch checkpoint"), ("evil.ckpt", "refusing to load")):
        with pytest.raises(CheckpointError, match=match) as info:
            load_model(tmp_path / name)
        assert "weights_only" not in str(info.value)


def test_a_device_that_does_not_exist_is_a_clear_error():
    """Item 8: load_model(device="cuda") on a CPU build raised torch's AssertionError."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="cuda"):
        load_model(device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        load_model(device="tpu-ish")


def test_building_on_the_meta_device_runs_no_random_init(monkeypatch):
    """The linear layers skip their random init on the meta device: torch 2.9 imports sympy for a meta
    tensor's uniform_ (73 MB; the fresh-interpreter test below then fails there). Off the meta device they are
    initialised as nn.Linear is."""
    from tirex.layers import Linear

    calls = []
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda t, *args, **kwargs: calls.append(t.is_meta) or t)
    with torch.device("meta"):
        TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=2, input_ff_dim=64, context_length=64))
    assert calls == []
    Linear(4, 3)
    assert calls == [False]


def test_loading_builds_without_pulling_in_symbolic_maths():
    """load_model builds the network on the meta device and assigns the checkpoint's tensors. torch's
    random init of a meta tensor (normal_) imports sympy (with the decompositions) on first use: ~800 modules
    and ~73 MB of resident memory kept for the process's life. Loading must not trigger it (a fresh
    interpreter, since another test may have imported them already)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from tirex import load_model\n"
        "model = load_model()\n"
        "model.forecast(torch.arange(64.0)[None], prediction_length=8)\n"
        "print(sorted(m for m in ('sympy', 'mpmath') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_a_model_built_on_cpu_is_still_initialised():
    model = TiRexModel(ModelConfig(embed_dim=64, num_heads=2, num_blocks=1, ffn_dim=96, input_ff_dim=64))
    gate = model.blocks[0].slstm.input_gate
    assert float(gate.detach().std()) > 0  # random init, not zeros
