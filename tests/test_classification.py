"""TiRexClassifier / TiRexRegressor as scikit-learn estimators on aeon-style collections, and `tirex classify`."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

from conftest import tiny_model  # noqa: E402
from tirex.classification import TiRexClassifier, TiRexRegressor  # noqa: E402
from tirex.cli import main  # noqa: E402
from tirex.io import InputError  # noqa: E402
from tirex.tsfile import read_collection_table, read_ts  # noqa: E402

FAST = dict(resolutions=(1,), n_estimators=50)  # keeps the tests quick; the defaults are benchmarked


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_blocks=2, noise=0.05)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return str(path)


def two_classes(n, length=48, seed=0, channels=None):
    """Class 0: slow waves; class 1: fast waves with a spike. Random phase, amplitude and noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.arange(length)
    rows = []
    for label in y:
        period = rng.uniform(20, 30) if label == 0 else rng.uniform(5, 8)
        x = rng.uniform(0.5, 2) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6)) + rng.normal(0, 0.2, length)
        if label:
            x[rng.integers(length)] += 3
        rows.append(x if channels is None else np.stack([x * (c + 1) for c in range(channels)]))
    return np.stack(rows), np.where(y == 1, "fast", "slow")


def test_fit_predict_shapes_and_accuracy(model):
    X, y = two_classes(40)
    Xt, yt = two_classes(30, seed=1)
    clf = TiRexClassifier(model=model, random_state=0, **FAST)
    assert clf.fit(X, y) is clf
    assert list(clf.classes_) == ["fast", "slow"] and clf.n_channels_ == 1
    pred, proba = clf.predict(Xt), clf.predict_proba(Xt)
    assert pred.shape == (30,) and proba.shape == (30, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert clf.score(Xt, yt) >= 0.8  # chance is 0.5
    assert clf.embed(Xt).shape[0] == 30


def test_sklearn_conventions_clone_pipeline_cross_validation(model):
    X, y = two_classes(30)
    clf = TiRexClassifier(model=model, head="random_forest", random_state=0, **FAST)
    params = clf.get_params()
    assert params["head"] == "random_forest" and params["model"] is model
    twin = clone(clf)
    assert twin.get_params()["segments"] == 8 and not hasattr(twin, "head_")
    twin.set_params(segments=4, diff=False)
    assert twin.segments == 4 and twin.diff is False
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 10.0)), ("clf", clf)])
    assert pipe.fit(X, y).score(X, y) > 0.9
    scores = cross_val_score(clone(clf), X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.6


def test_same_seed_same_result(model):
    X, y = two_classes(30)
    a = TiRexClassifier(model=model, random_state=3, **FAST).fit(X, y).predict_proba(X[:10])
    b = TiRexClassifier(model=model, random_state=3, **FAST).fit(X, y).predict_proba(X[:10])
    np.testing.assert_array_equal(a, b)


def test_unequal_lengths_and_multivariate(model):
    X, y = two_classes(30, length=80)
    rng = np.random.default_rng(2)
    ragged = [x[: rng.integers(30, 81)] for x in X]  # univariate, unequal lengths (1-D items)
    clf = TiRexClassifier(model=model, random_state=0, **FAST).fit(ragged, y)
    assert clf.predict([x[:45] for x in X[:5]]).shape == (5,)
    X3, y3 = two_classes(30, channels=3)  # (30, 3, 48)
    clf3 = TiRexClassifier(model=model, random_state=0, **FAST).fit(X3, y3)
    assert clf3.n_channels_ == 3 and clf3.embed(X3[:2]).shape[1] == 3 * clf.embed(ragged[:1]).shape[1]
    unequal3 = [x[:, : rng.integers(30, 49)] for x in X3]  # list of (channels, time_i)
    assert clf3.score(unequal3, y3) > 0.8
    with pytest.raises(ValueError, match="2 channel.*fitted on 3"):
        clf3.predict(X3[:, :2])
    assert clf3.fit(X3[:, :2], y3).n_channels_ == 2  # a new fit starts afresh


def test_heads(model):
    X, y = two_classes(30)
    for head in ("linear", "gradient_boosting", "random_forest", LogisticRegression(max_iter=500)):
        assert TiRexClassifier(model=model, head=head, random_state=0, **FAST).fit(X, y).score(X, y) > 0.8
    with pytest.raises(ValueError, match="head must be one of"):
        TiRexClassifier(model=model, head="svm").fit(X, y)
    with pytest.raises(TypeError, match="scikit-learn classifier"):
        TiRexClassifier(model=model, head=object()).fit(X, y)


def test_regression(model):
    rng = np.random.default_rng(0)
    level = rng.uniform(0, 10, 60)
    X = np.stack([lv + np.sin(np.arange(40) / 3 + rng.uniform(0, 6)) for lv in level])
    reg = TiRexRegressor(model=model, random_state=0, **FAST).fit(X[:40], level[:40])
    pred = reg.predict(X[40:])
    assert pred.shape == (20,) and np.corrcoef(pred, level[40:])[0, 1] > 0.9
    assert TiRexRegressor(model=model, head="linear", **FAST).fit(X[:40], level[:40]).score(X[40:], level[40:]) > 0.8
    with pytest.raises(ValueError, match="NaN or infinite"):
        TiRexRegressor(model=model, **FAST).fit(X[:3], [1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="numbers"):
        TiRexRegressor(model=model, **FAST).fit(X[:2], ["a", "b"])


def test_model_sources(model, model_dir, fixture_dir):
    X, y = two_classes(20)
    by_path = TiRexClassifier(model=model_dir, random_state=0, **FAST).fit(X, y)
    by_object = TiRexClassifier(model=model, random_state=0, **FAST).fit(X, y)
    np.testing.assert_allclose(by_path.embed(X), by_object.embed(X), atol=1e-6)
    published = TiRexClassifier(model=str(fixture_dir / "official" / "model.ckpt"), random_state=0, **FAST)
    assert published.fit(X, y).predict(X).shape == (20,)
    with pytest.raises(TypeError, match="model must be"):
        TiRexClassifier(model=3.5).fit(X, y)


def test_bundled_model_default(model):
    X, y = two_classes(12, length=30)
    clf = TiRexClassifier(random_state=0, resolutions=(1,), n_estimators=20).fit(X, y)
    assert clf.predict(X).shape == (12,)


def test_bad_input(model):
    X, y = two_classes(20)
    clf = TiRexClassifier(model=model, **FAST)
    with pytest.raises(ValueError, match="19 labels but X has 20 cases"):
        clf.fit(X, y[:19])
    with pytest.raises(ValueError, match="one class only"):
        clf.fit(X, np.full(20, "a"))
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="empty collection"):
        clf.fit([], [])
    with pytest.raises(ValueError, match="flat list"):
        clf.fit([1.0, 2.0, 3.0], [0])
    with pytest.raises(ValueError, match="case 3, channel 0 contains inf"):
        clf.fit(np.where(np.arange(20)[:, None] == 3, np.inf, X), y)
    X_all_nan = X.copy()
    X_all_nan[5] = np.nan
    with pytest.raises(ValueError, match="case 5 has no observed value"):
        clf.fit(X_all_nan, y)
    with pytest.raises(ValueError, match="case 1 has 2 channel"):
        clf.fit([np.zeros((1, 10)), np.zeros((2, 10))], [0, 1])
    with pytest.raises(TypeError, match="case 0"):
        clf.fit([np.array(["a", "b"])], [0])
    with pytest.raises(ValueError, match="empty"):
        clf.fit([np.zeros(0), np.zeros(5)], [0, 1])
    import scipy.sparse

    with pytest.raises(TypeError, match="sparse input is not supported"):
        clf.fit(scipy.sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="requires y"):
        clf.fit(X, None)
    with pytest.raises(NotFittedError):
        TiRexClassifier(model=model).predict(X)
    X_nan = X.copy()
    X_nan[:, 10:20] = np.nan  # missing values are fine
    assert clf.fit(X_nan, y).predict(X_nan).shape == (20,)


def test_cache_dir_gives_the_same_result(model, tmp_path):
    X, y = two_classes(20)
    a = TiRexClassifier(model=model, random_state=0, cache_dir=tmp_path, **FAST).fit(X, y)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = TiRexClassifier(model=model, random_state=0, cache_dir=tmp_path, **FAST).fit(X, y)
    np.testing.assert_allclose(a.embed(X), b.embed(X), atol=1e-6)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


# -- files and the command line -------------------------------------------------------------------------
def write_ts(path, X, y, regression=False, missing_at=None):
    lines = ["# written by the test", "@problemName Waves", "@timeStamps false", f"@univariate {str(X.shape[1] == 1).lower()}",
             f"@dimensions {X.shape[1]}", "@equalLength true",
             "@targetLabel true" if regression else f"@classLabel true {' '.join(sorted(set(map(str, y))))}", "@data"]
    for i, (case, label) in enumerate(zip(X, y)):
        channels = [",".join("?" if (missing_at == (i, t)) else f"{v:.6g}" for t, v in enumerate(row)) for row in case]
        lines.append(":".join(channels) + f":{label}")
    path.write_text("\n".join(lines) + "\n")


def test_read_ts(tmp_path):
    X, y = two_classes(6, channels=2)
    write_ts(tmp_path / "a.ts", X, y, missing_at=(2, 5))
    data = read_ts(tmp_path / "a.ts")
    assert len(data.cases) == 6 and data.cases[0].shape == (2, 48) and list(data.labels) == list(y)
    assert np.isnan(data.cases[2][0, 5]) and np.isnan(data.cases[2][1, 5])
    np.testing.assert_allclose(data.cases[0], X[0], rtol=1e-5)
    (tmp_path / "b.ts").write_text("@problemName x\n@classLabel true a b\n@data\n1,2,3:c\n")
    with pytest.raises(InputError, match="line 4: label 'c' is not among"):
        read_ts(tmp_path / "b.ts")
    (tmp_path / "c.ts").write_text("@timestamps true\n@classLabel true a\n@data\n(0,1):a\n")
    with pytest.raises(InputError, match="timeStamps"):
        read_ts(tmp_path / "c.ts")
    (tmp_path / "d.ts").write_text("@classLabel true a\n@data\n1,x,3:a\n")
    with pytest.raises(InputError, match="line 3: 'x' is not a number"):
        read_ts(tmp_path / "d.ts")


def test_read_tables_long_and_wide():
    wide = pd.DataFrame({"label": ["a", "b"], "t0": [1.0, 4.0], "t1": [2.0, 5.0], "t2": [3.0, np.nan]})
    data = read_collection_table(wide)
    assert [c.shape for c in data.cases] == [(1, 3), (1, 2)] and list(data.labels) == ["a", "b"]
    long = pd.DataFrame({"case_id": ["x"] * 4 + ["y"] * 2, "channel": [0, 0, 1, 1, 0, 1],
                         "time": [1, 0, 0, 1, 0, 0], "value": [2.0, 1.0, 3.0, 4.0, 5.0, 6.0],
                         "label": ["p"] * 4 + ["q"] * 2})
    data = read_collection_table(long)
    np.testing.assert_array_equal(data.cases[0], [[1.0, 2.0], [3.0, 4.0]])
    assert data.ids == ["x", "y"] and list(data.labels) == ["p", "q"]
    with pytest.raises(InputError, match="2 different labels"):
        read_collection_table(long.assign(label=["p", "r", "p", "p", "q", "q"]))


def test_cli_classify_ts_files(tmp_path, model_dir, capsys):
    X, y = two_classes(30, seed=0)
    Xt, yt = two_classes(20, seed=1)
    write_ts(tmp_path / "train.ts", X[:, None], y)
    write_ts(tmp_path / "test.ts", Xt[:, None], yt)
    out = tmp_path / "pred.csv"
    code = main(["classify", str(tmp_path / "train.ts"), str(tmp_path / "test.ts"), "--model", model_dir,
                 "-o", str(out), "--resolutions", "1,2", "--trees", "50"])
    assert code == 0
    res = pd.read_csv(out)
    assert list(res.columns) == ["case", "prediction", "label", "proba_fast", "proba_slow"] and len(res) == 20
    accuracy = float(capsys.readouterr().out.split()[1])
    assert accuracy == pytest.approx((res["prediction"] == res["label"]).mean()) and accuracy >= 0.8


def test_cli_classify_csv_regression_and_errors(tmp_path, model_dir, capsys):
    rng = np.random.default_rng(0)
    level = rng.uniform(0, 10, 30).round(2) + 0.5
    X = np.stack([lv + np.sin(np.arange(30) / 3) for lv in level])
    wide = pd.DataFrame(X, columns=[f"t{i}" for i in range(30)]).assign(y=level)
    wide[:20].to_csv(tmp_path / "train.csv", index=False)
    wide[20:].drop(columns="y").to_csv(tmp_path / "test.csv", index=False)
    code = main(["classify", str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), "--model", model_dir,
                 "--resolutions", "1", "--trees", "50"])
    captured = capsys.readouterr()
    assert code == 0 and "regressor" in captured.err and len(captured.out.strip().splitlines()) == 11
    wide[:20].drop(columns="y").to_csv(tmp_path / "unlabelled.csv", index=False)
    code = main(["classify", str(tmp_path / "unlabelled.csv"), str(tmp_path / "test.csv"), "--model", model_dir])
    assert code == 2 and "no labels" in capsys.readouterr().err
    code = main(["classify", str(tmp_path / "missing.ts"), str(tmp_path / "test.csv"), "--model", model_dir])
    assert code == 2 and "no such file" in capsys.readouterr().err
