"""The torch-free runtime (``tirex.lite``): the same bits as ``tirex.load_model(...).forecast`` with the compiled
kernels, on every kernel level, for every kind of series and setting; no torch in its process; the same
validation errors; clear errors for what it does not read."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tirex
from tirex import ModelConfig, TiRexModel, cpu_kernel, lite
from tirex.config import CheckpointError

from conftest import ROOT, assert_forecasts_agree, run_at_once, tiny_model
from test_cpu_dispatch import LEVEL_PARAMS
from test_fuzz import EXAMPLES, arrays, horizons, levels_strategy

# the same bits as the torch package where it runs the compiled matmuls too (else within the parity bar)
compiled = pytest.mark.skipif(cpu_kernel.active().matmuls != "compiled",
                              reason=f"no compiled matmuls here: {'; '.join(cpu_kernel.active().why)}")


def _series(seed=0):
    """Series of every kind a forecast meets: short and longer than the window, gaps, a leading gap, constant,
    all missing but one value, counts, magnitudes beyond float32, integers with None."""
    rng = np.random.default_rng(seed)
    series = [rng.normal(size=n).cumsum() * 10.0 ** rng.integers(-3, 4) for n in (5, 40, 333, 2500, 700)]
    series[2][50:120] = np.nan
    series[4][:600] = np.nan
    series += [np.abs(rng.normal(size=200)), np.full(100, 3.0), np.r_[np.full(50, np.nan), 7.0],
               rng.normal(size=300) * 1e30, rng.normal(size=64) * 1e300, [1, None, 3, 4, None, 6] * 10]
    return series


def _tiny(tmp_path, recurrence="bfloat16", heads=2, embed=64, seed=0):
    """A small random model (head size 32: the recurrence's bfloat16 pairs where the level reads them), saved."""
    torch.manual_seed(seed)
    model = TiRexModel(ModelConfig(embed_dim=embed, num_heads=heads, num_blocks=2, input_ff_dim=96, patch_size=16,
                                   context_length=256, recurrence_dtype=recurrence)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / f"tiny_{recurrence}_{heads}"
    model.save_pretrained(folder)
    return model, folder


SETTINGS = [
    dict(prediction_length=1),
    dict(prediction_length=32),
    dict(prediction_length=100, quantile_levels=(0.01, 0.1, 0.25, 0.5, 0.77, 0.9, 0.999), keep_sign=True),
    dict(prediction_length=300, batch_size=3, rollout_steps=2),
    dict(prediction_length=700, max_masked_fraction=None),
    dict(prediction_length=2500),  # beyond the window: predicted medians filled in
]


def _assert_same(got, expected):
    for g, e in zip(got, expected):
        e = e.numpy() if isinstance(e, torch.Tensor) else e
        assert g.dtype == e.dtype and g.shape == e.shape
        assert np.array_equal(g, e, equal_nan=True), f"max difference {np.nanmax(np.abs(g - e))}"


@compiled
@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items())[:40])
def test_the_bundled_model_gives_the_torch_forecasts_bit_for_bit(kwargs):
    series = _series()
    got = lite.load_model().forecast(series, **kwargs)
    _assert_same(got, tirex.load_model().forecast(series, **kwargs))


@compiled
@pytest.mark.parametrize("recurrence", ["bfloat16", "float32"])
@pytest.mark.parametrize("level,emulated", LEVEL_PARAMS)
def test_every_kernel_level_gives_the_torch_forecasts(tmp_path, recurrence, level, emulated, restore_dispatch):
    """The published recurrence (bfloat16, with the pairs layout the level reads) and float32, on each level."""
    model, folder = _tiny(tmp_path, recurrence)
    series = _series(1)[:6]
    ours = lite.load_model(folder)
    dispatch = cpu_kernel.select(level, emulate=emulated)
    for kwargs in (dict(prediction_length=40), dict(prediction_length=300, batch_size=2)):
        got, expected = ours.forecast(series, **kwargs), model.forecast(series, **kwargs)
        if dispatch.matmuls == "compiled":
            _assert_same(got, expected)
        else:  # a level without an FMA instruction: the torch package multiplies with torch's matmuls there
            assert_forecasts_agree(got[0], expected[0].numpy())


@compiled
def test_a_series_gets_the_same_forecast_alone_as_in_any_batch_and_from_any_thread():
    model = lite.load_model()
    series = _series(2)[:6]
    together = model.forecast(series, 64)
    alone = [model.forecast(s, 64) for s in series]
    for i, (q, mean) in enumerate(alone):
        assert np.array_equal(q[0], together[0][i], equal_nan=True) and np.array_equal(mean[0], together[1][i])
    threaded = run_at_once([lambda s=s: model.forecast(s, 64) for s in series])
    for (q, _), (q_alone, _) in zip(threaded, alone):
        assert np.array_equal(q, q_alone)


@pytest.fixture(scope="module")
def fuzz_pair(tmp_path_factory):
    """The fuzz tests' tiny model (context 64, patch 8: predictions filled in from horizon 33 on) and its lite twin."""
    model = tiny_model(num_blocks=1, noise=0.1)
    folder = tmp_path_factory.mktemp("fuzz") / "tiny"
    model.save_pretrained(folder)
    return model, lite.load_model(folder)


def _outcome(model, *args, **kwargs):
    """(the forecast, or the error's type and message; the warnings' messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = model.forecast(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            result = (type(exc), str(exc))
    return result, [str(w.message) for w in caught]


@compiled
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(context=arrays(), horizon=horizons, levels=levels_strategy, keep_sign=st.booleans())
def test_fuzzed_inputs_give_the_same_forecast_or_the_same_error(fuzz_pair, context, horizon, levels, keep_sign):
    """tests/test_fuzz.py's inputs (any dtype, shape, magnitude, NaN / inf, bad horizons and levels)."""
    model, ours = fuzz_pair
    expected, expected_warnings = _outcome(model, context, horizon, quantile_levels=levels, keep_sign=keep_sign)
    got, got_warnings = _outcome(ours, context, horizon, quantile_levels=levels, keep_sign=keep_sign)
    assert got_warnings == expected_warnings
    if isinstance(expected[0], type):
        assert got == expected
    else:
        _assert_same(got, expected)


def test_the_scaling_statistics_do_not_depend_on_the_summation_order():
    """float64 sums rounded once: torch's (any batch) and numpy's statistics agree bit for bit."""
    from tirex.scaling import fit_scale

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(7, 2048)) * 1e3 + 5e4).astype(np.float32)
    x[1, :1000] = np.nan
    x[2] = np.nan
    x[3] = 12.5
    loc, scale = fit_scale(torch.from_numpy(x))
    np_loc, np_scale = lite.fit_scale(x)
    assert np.array_equal(loc.numpy(), np_loc) and np.array_equal(scale.numpy(), np_scale)
    for i in range(len(x)):
        one = fit_scale(torch.from_numpy(x[i:i + 1]))
        assert torch.equal(one.loc[0], loc[i]) and torch.equal(one.scale[0], scale[i])
    assert (loc[2].item(), scale[2].item()) == (0.0, 1.0)  # all missing
    assert scale[3].item() == pytest.approx(12.5 + 1e-5)  # constant


def test_a_fresh_process_forecasts_without_importing_torch():
    code = ("import sys, warnings; warnings.simplefilter('error')\n"
            "import numpy as np, tirex.lite as lite\n"
            "q, mean = lite.load_model().forecast(np.sin(np.arange(500) / 9), 48)\n"
            "assert q.shape == (1, 48, 9) and np.isfinite(q).all()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'sympy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if "tirex.lite runs on the compiled CPU kernels" in proc.stderr:
        pytest.skip("no compiled kernels here")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]" and proc.stderr == ""


BAD_CONTEXTS = [[], "1,2,3", {"a": [1, 2]}, np.zeros((2, 3, 4)), [[1.0, 2.0], []], np.array([1 + 2j, 3]),
                [1.0, [2.0, 3.0]], np.array(["1", "2"]), 5.0]


@pytest.mark.parametrize("context", BAD_CONTEXTS, ids=range(len(BAD_CONTEXTS)))
def test_bad_input_gets_the_same_error_as_from_the_torch_package(context):
    with pytest.raises((ValueError, TypeError)) as torch_error:
        tirex.load_model().forecast(context, 10)
    with pytest.raises(type(torch_error.value)) as lite_error:
        lite.load_model().forecast(context, 10)
    assert str(lite_error.value) == str(torch_error.value)


@pytest.mark.parametrize("kwargs", [dict(prediction_length=0), dict(prediction_length=2.5),
                                      dict(prediction_length=8, quantile_levels=[0.5, 1.2]),
                                      dict(prediction_length=8, batch_size=0),
                                      dict(prediction_length=8, max_masked_fraction=2.0)])
def test_bad_settings_get_the_same_error_as_from_the_torch_package(kwargs):
    with pytest.raises((ValueError, TypeError)) as torch_error:
        tirex.load_model().forecast([1.0, 2.0, 3.0], **kwargs)
    with pytest.raises(type(torch_error.value)) as lite_error:
        lite.load_model().forecast([1.0, 2.0, 3.0], **kwargs)
    assert str(lite_error.value) == str(torch_error.value)


def test_warnings_name_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lite.load_model().forecast([1.0, np.inf, 3.0] * 10, 4)
        tirex.load_model().forecast([1.0, np.inf, 3.0] * 10, 4)
    assert len(caught) == 2 and all(w.filename == __file__ for w in caught), [(w.filename, w.message) for w in caught]
    assert "inf" in str(caught[0].message)


def test_tables_are_pointed_to_the_torch_package():
    pd = pytest.importorskip("pandas")
    with pytest.raises(TypeError, match="tirex.load_model"):
        lite.load_model().forecast(pd.Series([1.0, 2.0, 3.0]), 4)


def test_models_it_cannot_read_get_clear_errors(tmp_path):
    model, folder = _tiny(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lite.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        lite.load_model(tmp_path)
    ckpt = tmp_path / "ref" / "model.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not read")
    for path in (ckpt, ckpt.parent):
        with pytest.raises(CheckpointError, match="save_pretrained"):
            lite.load_model(path)
    # weights that do not fit the config: another width, a missing tensor, NaN, a truncated file
    config = json.loads((folder / "config.json").read_text())
    config["embed_dim"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has shape"):
        lite.load_model(folder)
    config["embed_dim"], config["num_blocks"] = 64, 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing .'blocks.2"):
        lite.load_model(folder)
    config["num_blocks"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        model.out_norm.weight[3] = float("nan")
    model.save_pretrained(folder)
    with pytest.raises(CheckpointError, match="out_norm.weight holds NaN"):
        lite.load_model(folder)
    from safetensors.numpy import save_file

    save_file({"block_stack.blocks.0.norm_ffn.weight": np.ones(64, np.float32)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="published layout's names"):
        lite.load_model(folder)
    model.save_pretrained(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        lite.load_model(folder)


def test_without_the_compiled_kernels_it_says_so():
    code = "import tirex.lite as lite; lite.load_model().forecast([1.0, 2.0, 3.0], 4)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**__import__("os").environ, "TIREX_CPU_KERNEL": "0"})
    assert proc.returncode != 0
    assert "RuntimeError: tirex.lite runs on the compiled CPU kernels" in proc.stderr
    assert "TIREX_CPU_KERNEL=0" in proc.stderr and "tirex.load_model() runs without them" in proc.stderr


def test_the_thread_count_is_checked_and_capped():
    from tirex.cpus import cpu_budget

    assert lite.load_model(threads=10_000).threads == cpu_budget().cpus
    with pytest.raises(ValueError, match="threads"):
        lite.load_model(threads=0)


def test_import_tirex_is_lazy_but_complete():
    """``import tirex`` imports no torch until a name needs it; every exported name and submodule resolves."""
    code = ("import sys, tirex\nassert 'torch' not in sys.modules\n"
            "names = [getattr(tirex, n) for n in tirex.__all__]\nassert 'torch' in sys.modules\n"
            "assert tirex.forecast.forecast_tensors and tirex.cpu_forward.CompiledForward\n"
            "from tirex import *\nprint(load_model.__module__, TiRexModel.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["tirex.loading", "TiRexModel"]
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        tirex.no_such_name


def test_half_precision_files_are_read_as_float32(tmp_path):
    """bfloat16 (no numpy dtype: its bits are the upper half of a float32) and float16 tensors, as torch reads them."""
    from safetensors.torch import save_file

    values = torch.randn(5, 7) * 100
    tensors = {"a": values.to(torch.bfloat16), "b": values.half(), "c": values, "d": values.double()}
    save_file(tensors, tmp_path / "x.safetensors")
    read = dict(lite._safetensors(tmp_path / "x.safetensors"))
    assert sorted(read) == ["a", "b", "c", "d"]
    for name, tensor in tensors.items():
        assert read[name].dtype == np.float32 and np.array_equal(read[name], tensor.float().numpy()), name
