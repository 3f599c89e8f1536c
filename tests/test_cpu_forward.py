"""The prepared CPU forward (``tirex.cpu_forward``): the same bits as the layer-by-layer path on every kernel
level and for every way ``TiRexModel.forward`` is called, used by forecasts, and prepared again (or not
used) whenever the model, its settings or the kernels change."""

import numpy as np
import pytest
import torch
from torch import nn

from tirex import ModelConfig, TiRexModel, cpu_forward, cpu_kernel
from tirex.inference import ROWS_PER_CHUNK

from conftest import run_at_once
from test_cpu_dispatch import LEVEL_PARAMS

kernels = pytest.mark.skipif(cpu_kernel.load() is None, reason=f"CPU kernel unavailable: {cpu_kernel.error()}")
# what forecasts use by default here: the prepared forward needs the compiled weight matmuls, which the default
# dispatch leaves to torch on some machines (no kernel, an x86 CPU without AVX2 + FMA, TIREX_CPU_GEMM=0)
prepared = pytest.mark.skipif(cpu_kernel.active().matmuls != "compiled",
                              reason=f"no compiled matmuls by default here: {'; '.join(cpu_kernel.active().why)}")


def _model(recurrence="bfloat16", embed=128, heads=2, blocks=3, seed=0):
    torch.manual_seed(seed)
    model = TiRexModel(ModelConfig(embed_dim=embed, num_heads=heads, num_blocks=blocks, input_ff_dim=96,
                                   context_length=256, recurrence_dtype=recurrence)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _flat(result) -> torch.Tensor:
    """Every tensor of a forward's result (quantiles, states, snapshots, hidden outputs) in one vector."""
    return torch.cat([t.reshape(-1) for t in torch.utils._pytree.tree_leaves(result)])


def _layer_by_layer(model, tokens, states=None, return_states=False, last_tokens=None, return_hidden=False,
                    snapshot_at=None):
    """``model.forward`` with the prepared forward switched off (what it returns, arranged the same way)."""
    out, new_states, snapshots = model._forward_layers(tokens, states, last_tokens, return_hidden, snapshot_at)
    if return_hidden:
        return out
    result = (out, new_states) if return_states else (out,)
    return (*result, snapshots) if snapshot_at is not None else result


CALLS = [
    {},
    {"last_tokens": 1},
    {"last_tokens": 3},
    {"last_tokens": 50},  # more than there are: every token
    {"return_states": True},
    {"snapshot_at": 4, "last_tokens": 2},
    {"snapshot_at": 9, "return_states": True},  # the snapshot after the last step: the final state
    {"return_hidden": True},
]


@kernels
@pytest.mark.parametrize("recurrence", ["bfloat16", "float32"])
@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
def test_the_prepared_forward_gives_the_layer_by_layer_bits(level, emulated, recurrence, restore_dispatch):
    cpu_kernel.select(level, "compiled", emulated)
    if cpu_kernel.active().matmuls != "compiled":
        pytest.skip(f"{level}: torch's matmuls here (no FMA level), nothing prepared")
    model = _model(recurrence)
    torch.manual_seed(1)
    tokens = torch.randn(3, 11, 2 * model.config.patch_size)[:, 2:]  # not contiguous
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is not None
        for kwargs in CALLS:
            assert torch.equal(_flat(model(tokens, **kwargs)), _flat(_layer_by_layer(model, tokens, **kwargs))), kwargs
        # continued from states (a stream), and from states expanded from one row (the shared empty start)
        _, states = model(tokens[:, :5], return_states=True)
        for start in (states, [type(s)(*(t[:, :1].expand(-1, 3, -1) for t in s)) for s in states]):
            ours = model(tokens[:, 5:], start, return_states=True, last_tokens=1)
            assert torch.equal(_flat(ours), _flat(_layer_by_layer(model, tokens[:, 5:], start, True, 1)))
        # more rows than one chunk of the feed-forward and the residual blocks
        many = torch.randn(ROWS_PER_CHUNK // 8 + 3, 9, 2 * model.config.patch_size)
        assert torch.equal(model(many), _layer_by_layer(model, many)[0])


@prepared
def test_forecasts_run_the_prepared_forward_with_the_same_results(monkeypatch, restore_dispatch):
    model = _model()
    rng = np.random.default_rng(0)
    series = [rng.normal(size=n).cumsum() for n in (30, 256, 500, 90)]
    calls = []
    prepared_call = cpu_forward.CompiledForward.__call__
    monkeypatch.setattr(cpu_forward.CompiledForward, "__call__",
                        lambda self, *a: calls.append(1) or prepared_call(self, *a))
    quantiles, mean = model.forecast(series, prediction_length=70, batch_size=3)
    assert calls, "the forecast did not use the prepared forward"
    monkeypatch.setattr(cpu_forward, "compiled_forward", lambda model: None)
    layered_q, layered_mean = model.forecast(series, prediction_length=70, batch_size=3)
    assert torch.equal(quantiles, layered_q) and torch.equal(mean, layered_mean)


@prepared
def test_the_prepared_forward_follows_every_change_of_the_model(restore_dispatch):
    model = _model()
    tokens = torch.randn(2, 8, 2 * model.config.patch_size)

    def check(prepared: bool):
        with torch.no_grad():
            plan = cpu_forward.compiled_forward(model)
            assert (plan is not None) == prepared
            ours = model(tokens, return_states=True)
            assert torch.equal(_flat(ours), _flat(_layer_by_layer(model, tokens, return_states=True)))
            return ours[0]

    before = check(True)
    assert cpu_forward.compiled_forward(model) is cpu_forward.compiled_forward(model)  # kept while nothing changes
    with torch.no_grad():  # an in-place update (an optimiser step)
        model.blocks[1].ffn.down.weight.mul_(1.5)
        model.blocks[0].slstm.recurrent.add_(0.01)
    after = check(True)
    assert not torch.equal(before, after)
    model.blocks[2].ffn.up = nn.Linear(*reversed(model.blocks[2].ffn.up.weight.shape), bias=False)  # a new layer
    check(True)
    model.load_state_dict({k: v * 0.9 for k, v in model.state_dict().items()})
    check(True)
    model.blocks.append(type(model.blocks[0])(model.config.embed_dim, model.config.num_heads,
                                               model.config.ffn_dim, model.config.recurrence_dtype))
    assert len(cpu_forward.compiled_forward(model).kernels.operands) == 4
    check(True)
    model.set_recurrence_dtype("float32")
    check(True)
    model.set_backend("torch")  # the torch loop: nothing prepared
    check(False)
    model.set_backend("auto")
    check(True)
    cpu_kernel.select(None, "torch")  # torch's matmuls
    check(False)
    cpu_kernel.reset()
    check(True)


@prepared
def test_a_prepared_forward_does_not_keep_its_model_alive():
    model = _model()
    with torch.no_grad():
        model(torch.randn(1, 4, 2 * model.config.patch_size))
    assert model in cpu_forward._prepared
    entries = len(cpu_forward._prepared)
    del model
    import gc

    gc.collect()
    assert len(cpu_forward._prepared) == entries - 1


@prepared
def test_hooks_and_wrapped_layers_take_the_layer_by_layer_path(restore_dispatch):
    model = _model()
    tokens = torch.randn(2, 8, 2 * model.config.patch_size)
    seen = []
    handle = model.blocks[1].register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is None
        model(tokens)
    assert seen == [(2, 8, model.config.embed_dim)]  # the hook ran
    handle.remove()
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is not None

    gate = model.blocks[0].ffn.gate
    model.blocks[0].ffn.gate = Scaled(gate.in_features, gate.out_features, bias=False)
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is None


class Scaled(nn.Linear):
    """A layer that is not a plain nn.Linear (a subclass with a forward of its own)."""

    def forward(self, x):
        return super().forward(x) * 2


class LowRankAdapter(nn.Module):
    """An adapter around a layer, as LoRA libraries wrap one: base(x) + B(A(x)); it exposes the base weight."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.b.weight, std=0.5)

    @property
    def weight(self):
        return self.base.weight

    @property
    def out_features(self):
        return self.base.out_features

    def forward(self, x):
        return self.base(x) + self.b(self.a(x))


@pytest.mark.parametrize("wrap", ["subclass", "adapter"])
@pytest.mark.parametrize("where", ["ffn", "head", "embedding"])
def test_a_wrapped_layer_runs_its_own_forward_at_inference(wrap, where, restore_dispatch):
    """No inference path reads a wrapped layer's weight and skips its forward: no-grad forecasts equal the
    modules' own forwards (grad enabled) and differ from the unwrapped model's."""
    model = _model()
    tokens = torch.randn(3, 8, 2 * model.config.patch_size)
    with torch.no_grad():
        unwrapped = model(tokens)
    parent, name = {"ffn": (model.blocks[1].ffn, "up"), "head": (model.head, "hidden"),
                    "embedding": (model.patch_embedding, "residual")}[where]
    layer = getattr(parent, name)
    if wrap == "subclass":
        new = Scaled(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.load_state_dict(layer.state_dict())
    else:
        new = LowRankAdapter(layer)
    setattr(parent, name, new)
    with torch.enable_grad():
        own = model(tokens).detach()  # every module's own forward
    for matmuls in ("compiled", "torch"):
        cpu_kernel.select(None, matmuls)
        with torch.no_grad():
            ours = model(tokens)
        # the two paths differ by float rounding (a few 1e-4 here, as without the wrapper); the wrapper by more
        torch.testing.assert_close(ours, own, rtol=1e-3, atol=2e-3)
        assert (ours - unwrapped).abs().max() > 20 * (ours - own).abs().max()


@kernels
def test_states_of_the_wrong_size_are_a_clear_error():
    model = _model()
    tokens = torch.randn(3, 8, 2 * model.config.patch_size)
    with torch.no_grad():
        _, states = model(tokens[:2], return_states=True)  # two series' states for three series
        with pytest.raises(ValueError, match="starting state"):
            model(tokens, states)
        with pytest.raises(ValueError, match="snapshot_at"):
            model(tokens, snapshot_at=9)


@prepared
def test_fast_mode_and_float64_weights_are_not_prepared(restore_dispatch):
    model = _model()
    tokens = torch.randn(2, 8, 2 * model.config.patch_size)
    assert model.set_fast_mode(True, force=True)
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is None
        assert model(tokens).isfinite().all()
    model.set_fast_mode(False)
    with torch.no_grad():
        assert cpu_forward.compiled_forward(model) is not None
        assert cpu_forward.compiled_forward(_model().double()) is None


@prepared
def test_threads_preparing_at_once_get_the_results_of_one_after_another():
    """Several threads meet a model that is not prepared yet (each may prepare it) and forward at once."""
    import copy

    model = _model()
    batches = [torch.randn(n, 6, 2 * model.config.patch_size) for n in (1, 3, 5, 2)] * 2
    with torch.no_grad():
        expected = [_layer_by_layer(model, tokens, last_tokens=1)[0] for tokens in batches]
    fresh = copy.deepcopy(model)  # never prepared

    def forward(tokens):
        with torch.no_grad():
            return fresh(tokens, last_tokens=1)

    results = run_at_once([lambda t=t: forward(t) for t in batches])
    assert cpu_forward.compiled_forward(fresh) is not None
    for got, want in zip(results, expected):
        assert torch.equal(got, want)
