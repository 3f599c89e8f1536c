"""model.embed / tirex.embedding: what the vector is, input types, windows, NaN, batching, the disk cache."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from tirex import load_model
from tirex.embedding import (
    EmbeddingOptions,
    embed_collection,
    embedding_size,
    model_embedding,
    segment_statistics,
    standardise_blocks,
    stretch,
    to_collection,
    window_starts,
)
from tirex.embedding_cache import cache_file, cached_embeddings


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_blocks=2, noise=0.05)


def wave(n, period=12.0, phase=0.0, level=0.0):
    return level + np.sin(2 * np.pi * np.arange(n) / period + phase)


def test_hidden_states_are_the_blocks_outputs(model):
    x = torch.tensor(wave(64), dtype=torch.float32).view(1, -1)
    tokens = torch.cat([x.view(1, 8, 8), torch.ones(1, 8, 8)], dim=-1)
    with torch.no_grad():
        hidden = model(tokens, return_hidden=True)
        out = model(tokens)
        # the head applied to the last block's output gives the forecast: these are the real hidden states
        again = model.head(model.out_norm(hidden[-1])).view_as(out)
    assert len(hidden) == 2 and hidden[0].shape == (1, 8, 16)
    assert not torch.allclose(hidden[0], hidden[1])  # copies, not one reused buffer
    torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-4)


def test_shapes_and_output_types(model):
    size = embedding_size(model)
    assert size == 3 * 2 * 2 * 16 + 4 * 8 + 1
    assert model.embed(wave(50)).shape == (1, size)
    out = model.embed(np.stack([wave(50), wave(50, 5)]))
    assert isinstance(out, np.ndarray) and out.shape == (2, size) and np.isfinite(out).all()
    ragged = model.embed([wave(10), wave(300), wave(3)])
    assert isinstance(ragged, torch.Tensor) and ragged.shape == (3, size)
    assert model.embed(wave(50), diff=False, statistics=False, resolutions=(1,)).shape == (1, 2 * 16)
    vector = model.embed(pd.Series(wave(40)))
    assert vector.shape == (size,)


def test_multivariate_cases_concatenate_channels(model):
    X = np.stack([np.stack([wave(40), wave(40, 5)]) for _ in range(3)])  # (3 cases, 2 channels, 40)
    flat = model.embed(X)
    per_channel = model.embed(X, per_channel=True)
    size = embedding_size(model)
    assert flat.shape == (3, 2 * size) and per_channel.shape == (3, 2, size)
    np.testing.assert_allclose(flat[:, size:], model.embed(X[:, 1]), atol=1e-5)  # channel 1 alone
    ragged = model.embed([np.stack([wave(40), wave(40, 5)]), np.stack([wave(90), wave(90, 5)])])
    assert ragged.shape == (2, 2 * size)


def test_dataframe_gives_one_row_per_id(model):
    df = pd.concat(pd.DataFrame({"item_id": k, "timestamp": pd.date_range("2024-01-01", periods=n, freq="h"),
                                 "target": wave(n, level=lvl)}) for k, n, lvl in (("b", 30, 0.0), ("a", 70, 5.0)))
    out = model.embed(df)
    assert list(out.index) == list(model.forecast(df, 1)["item_id"])  # the ids in forecast's order
    assert list(out.index) == ["b", "a"] and out.shape[0] == 2  # first appearance, as tirex.io's tables
    np.testing.assert_allclose(out.loc["a"].to_numpy(), model.embed(wave(70, level=5.0))[0], atol=1e-5)


def test_results_do_not_depend_on_batching(model):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=rng.integers(5, 200)).cumsum() for _ in range(9)]
    a = model.embed(series, batch_size=9, output_type="numpy")
    b = model.embed(series, batch_size=2, output_type="numpy")
    c = np.concatenate([model.embed(s) for s in series])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_long_series_is_the_average_of_its_windows(model):
    s = torch.tensor(wave(200, 17) + np.linspace(0, 3, 200))
    starts = window_starts(200, 64, 0.5)
    assert starts == [0, 32, 64, 96, 128, 136]
    whole = model_embedding(model, [s])
    windows = torch.cat([model_embedding(model, [s[a:a + 64]]) for a in starts])
    torch.testing.assert_close(whole[0], windows.mean(0), rtol=1e-4, atol=1e-5)
    # the long series is not reduced to its last window: the start of the series matters
    other = s.clone()
    other[:50] += 5.0
    assert not torch.allclose(model_embedding(model, [other]), whole, atol=1e-3)


def test_blocks_are_standardised():
    means = torch.randn(4, 3, 16) * 7 + 3
    out = standardise_blocks(means)
    torch.testing.assert_close(out.mean(-1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(4, 3), atol=1e-4, rtol=0)


def test_segment_statistics_and_stretch():
    s = torch.arange(16, dtype=torch.float64)
    stats = segment_statistics([s], 4)[0]
    np.testing.assert_allclose(stats[:4], [1.5, np.std([0, 1, 2, 3]), 0, 3], rtol=1e-6)
    np.testing.assert_allclose(stats[12:16], [13.5, np.std([12, 13, 14, 15]), 12, 15], rtol=1e-6)
    assert stats[-1] == pytest.approx(np.log1p(16))
    short = segment_statistics([torch.tensor([2.0, float("nan")])], 4)[0]  # fewer values than segments
    assert torch.isfinite(short).all() and short[0] == 2.0
    stretched = stretch(torch.tensor([0.0, 2.0, float("nan"), 4.0]), 2)
    np.testing.assert_allclose(stretched[:3], [0.0, 1.0, 2.0])
    assert torch.isnan(stretched[3:6]).all() and stretched[-1] == 4.0


def test_missing_values(model):
    s = wave(100)
    s[10:30] = np.nan
    assert np.isfinite(model.embed(s)).all()
    assert np.isfinite(model.embed(np.full(40, np.nan))).all()  # documented: finite, like forecast
    with pytest.warns(UserWarning, match="inf"):
        with_inf = model.embed(np.where(np.arange(100) == 50, np.inf, s))
    np.testing.assert_allclose(with_inf, model.embed(np.where(np.arange(100) == 50, np.nan, s)), atol=1e-6)
    # an all-missing patch in the middle does not count in the average of the first block ...
    gap = wave(64)
    gap[24:32] = np.nan
    assert np.isfinite(model.embed(gap)).all()


def test_published_layout_model_embeds_like_its_converted_copy(fixture_dir, tmp_path):
    published = load_model(fixture_dir / "official" / "model.ckpt")
    published.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    X = [wave(100), wave(600, 30), wave(20)]  # shorter and longer than the context (512)
    a = published.embed(X, resolutions=(1, 2), output_type="numpy")
    assert a.shape == (3, embedding_size(published, EmbeddingOptions(resolutions=(1, 2)))) and np.isfinite(a).all()
    np.testing.assert_allclose(a, ours.embed(X, resolutions=(1, 2), output_type="numpy"), atol=1e-5)


def test_bad_input(model):
    with pytest.raises(ValueError, match="empty list"):
        model.embed([])
    with pytest.raises(ValueError, match="series 1 is empty"):
        model.embed([wave(10), []])
    with pytest.raises(TypeError):
        model.embed(np.array([["a", "b"]]))
    with pytest.raises(TypeError):
        model.embed("abc")
    with pytest.raises(ValueError, match="4-D"):
        to_collection(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="segments"):
        model.embed(wave(10), segments=0)
    with pytest.raises(ValueError, match="resolutions"):
        model.embed(wave(10), resolutions=(1, 0))
    with pytest.raises(ValueError, match="batch_size"):
        model.embed(wave(10), batch_size=0)
    with pytest.raises(ValueError, match="case 1 has 1 channel"):
        model.embed([np.zeros((2, 5)), np.zeros((1, 5))])


def test_disk_cache_embeds_each_series_once(model, tmp_path):
    options = EmbeddingOptions(resolutions=(1,))
    cases = to_collection(np.stack([wave(30, p) for p in (3, 5, 7)]))
    calls = []

    def compute(series):
        calls.append(len(series))
        return embed_collection(model, [s[None] for s in series], options)

    fresh = embed_collection(model, cases, options)
    first = cached_embeddings(tmp_path, model, options, [c[0] for c in cases], compute)
    again = cached_embeddings(tmp_path, model, options, [cases[2][0], cases[0][0]], compute)
    assert calls == [3]  # the second call found both in the cache
    np.testing.assert_allclose(first, fresh, atol=1e-6)
    np.testing.assert_array_equal(again, first[[2, 0]])
    path = cache_file(tmp_path, model, options)
    with np.load(path, allow_pickle=False) as data:  # a plain npz: no pickled objects inside
        assert data["vectors"].shape == (3, embedding_size(model, options))
    # other options or other weights: another file
    assert cache_file(tmp_path, model, EmbeddingOptions()) != path
    path.write_bytes(b"not a zip file")  # a damaged cache is recomputed, never trusted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached_embeddings(tmp_path, model, options, [cases[1][0]], compute)
    assert calls == [3, 1]
    np.testing.assert_allclose(again[0], first[1], atol=1e-6)
