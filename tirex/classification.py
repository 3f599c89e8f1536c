"""Classification and regression on frozen TiRex embeddings: scikit-learn estimators in aeon's conventions.

``TiRexClassifier`` and ``TiRexRegressor`` embed every case with a forecaster (``tirex.embedding``) and fit
a small head on the vectors: extremely randomised trees (default), a random forest, a linear model or
gradient boosting, or any scikit-learn estimator you pass. Collections follow aeon: a 3-D array (n_cases, n_channels, n_timepoints),
a 2-D array (n_cases, n_timepoints) for univariate data, or a list of 2-D (n_channels, n_timepoints_i)
arrays of unequal lengths (1-D items count as one channel).

>>> clf = TiRexClassifier(random_state=0).fit(X_train, y_train)
>>> clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

Needs scikit-learn (``pip install 'tirex[classification]'``).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone, is_classifier, is_regressor
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .embedding import EmbeddingOptions, embed_collection, to_collection

HEADS = ("extra_trees", "random_forest", "linear", "gradient_boosting")

_loaded_models: dict[tuple[str, str | None], Any] = {}


def resolve_model(model, device: str | None = None):
    """A loaded ``TiRexModel`` from ``model``: None (the bundled model), a source for ``load_model``
    (folder, .ckpt, .safetensors, Hub repo id), or a loaded model (returned as is). Sources are loaded
    once per process, so clones of an estimator (cross-validation, grid search) share one copy."""
    from .model import TiRexModel

    if isinstance(model, TiRexModel):
        return model if device is None else model.to(device)
    if model is not None and not isinstance(model, (str, Path)):
        raise TypeError(
            f"model must be None (the bundled model), a model source (str or Path) or a loaded TiRexModel, "
            f"got {type(model).__name__}"
        )
    key = (None if model is None else str(model), device)
    if key not in _loaded_models:
        from .loading import load_model

        _loaded_models[key] = load_model(model, device=device)
    return _loaded_models[key]


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _TiRexEstimator(BaseEstimator):
    """Shared parts: parameters, embedding (with the optional disk cache), input checks, the head."""

    _task = ""

    def __init__(
        self,
        model=None,
        head="extra_trees",
        diff: bool = True,
        statistics: bool = True,
        segments: int = 8,
        resolutions=(1, 2, 4),
        n_estimators: int = 500,
        random_state=None,
        n_jobs: int | None = None,
        batch_size: int = 256,
        cache_dir=None,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.head = head
        self.diff = diff
        self.statistics = statistics
        self.segments = segments
        self.resolutions = resolutions
        self.n_estimators = n_estimators
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress

    # -- embedding ----------------------------------------------------------------------------------
    def _options(self) -> EmbeddingOptions:
        return EmbeddingOptions(diff=bool(self.diff), statistics=bool(self.statistics), segments=self.segments,
                                resolutions=self.resolutions)

    def _collection(self, X, what: str = "X", fitting: bool = False) -> list[np.ndarray]:
        cases = to_collection(X, what, allow_inf=False, allow_empty_cases=False)
        if not fitting and cases[0].shape[0] != self.n_channels_:
            raise ValueError(
                f"{what} has {cases[0].shape[0]} channel(s) per case, but the estimator was fitted on "
                f"{self.n_channels_}; pass the same channels in the same order"
            )
        return cases

    def _embed(self, cases: list[np.ndarray]) -> np.ndarray:
        _check_int("batch_size", self.batch_size)
        model = resolve_model(self.model, self.device)
        return embed_collection(model, cases, self._options(), self.batch_size, self.progress, self.cache_dir)

    # -- head ----------------------------------------------------------------------------------------
    def _make_head(self):
        head = self.head
        if not isinstance(head, str):
            if not hasattr(head, "fit") or not (is_classifier(head) if self._task == "classifier" else is_regressor(head)):
                raise TypeError(
                    f"head must be one of {HEADS} or a scikit-learn {self._task} (with fit/predict), "
                    f"got {type(head).__name__}"
                )
            return clone(head)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS} or a scikit-learn {self._task}, got {head!r}")
        _check_int("n_estimators", self.n_estimators)
        return _build_head(self._task, head, self.n_estimators, self.random_state, self.n_jobs)

    def _fit(self, X, y):
        cases = self._collection(X, fitting=True)
        y = self._check_targets(y, len(cases))
        self.head_ = self._make_head()  # checked before the (slow) embedding
        self.n_channels_ = cases[0].shape[0]
        features = self._embed(cases)
        with self._head_threads():
            self.head_.fit(features, y)
        self.embedding_dim_ = int(self.head_.n_features_in_) if hasattr(self.head_, "n_features_in_") else None
        return self

    def _head_threads(self):
        """OpenMP threads of the head (gradient boosting) limited to ``n_jobs`` (None = 1, scikit-learn's
        meaning): with more threads than free cores OpenMP's waiting threads make a fit 100x slower."""
        from joblib import effective_n_jobs
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=effective_n_jobs(self.n_jobs), user_api="openmp")

    def _features(self, X) -> np.ndarray:
        check_is_fitted(self, ["head_", "n_channels_"])
        return self._embed(self._collection(X))

    def embed(self, X) -> np.ndarray:
        """The embeddings the head sees: (n_cases, n_channels * embedding size) float32."""
        return self._features(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = self.random_state is None
        return tags


def _build_head(task: str, head: str, n_estimators: int, random_state, n_jobs):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classifier":
        if head == "extra_trees":
            from sklearn.ensemble import ExtraTreesClassifier

            return ExtraTreesClassifier(n_estimators=n_estimators, random_state=random_state, n_jobs=n_jobs)
        if head == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(n_estimators=n_estimators, random_state=random_state, n_jobs=n_jobs)
        if head == "linear":
            from sklearn.linear_model import LogisticRegression

            return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, random_state=random_state))
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(min_samples_leaf=5, random_state=random_state)  # few cases per class are common
    if head == "extra_trees":
        from sklearn.ensemble import ExtraTreesRegressor

        # the square root of the features per split, as for classification: as accurate on the
        # benchmark's regression sets as all of them (scikit-learn's default), and 30x faster
        return ExtraTreesRegressor(n_estimators=n_estimators, max_features="sqrt", random_state=random_state,
                                   n_jobs=n_jobs)
    if head == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=n_estimators, max_features="sqrt", random_state=random_state,
                                     n_jobs=n_jobs)
    if head == "linear":
        from sklearn.linear_model import RidgeCV

        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(min_samples_leaf=5, random_state=random_state)


class TiRexClassifier(ClassifierMixin, _TiRexEstimator):
    """Time-series classifier: frozen TiRex embeddings + a tree-ensemble, linear or gradient-boosting head.

    Args:
        model: None (the bundled model), a source for ``tirex.load_model`` (folder, .ckpt, Hub repo id),
            or a loaded ``TiRexModel``.
        head: "extra_trees" (default: extremely randomised trees, a random forest that also draws its split
            points at random; 0.01-0.02 more accurate than "random_forest" on the benchmark), "random_forest",
            "linear" (standardised logistic regression), "gradient_boosting" (histogram gradient boosting),
            or any scikit-learn classifier (cloned on fit).
        diff, statistics, segments, resolutions: what goes into the embedding
            (``tirex.embedding.EmbeddingOptions``); ``resolutions=(1,)`` is the paper's recipe and 7x cheaper.
        n_estimators: trees of the tree-ensemble heads.
        random_state: seed of the head (the embedding itself is deterministic).
        n_jobs: parallel jobs of the tree-ensemble heads.
        batch_size: series (channels) per forward pass while embedding.
        cache_dir: folder for an on-disk cache of embeddings (``.npz`` files keyed by the model's
            weights, the embedding options and each case's values); None = no cache.
        device: torch device for the model (default: where it is).
        progress: show a progress bar while embedding.

    Attributes (after ``fit``): ``classes_``, ``head_`` (the fitted head), ``n_channels_``.

    Example:
        >>> clf = TiRexClassifier(random_state=0).fit(X_train, y_train)
        >>> clf.score(X_test, y_test)
    """

    _task = "classifier"

    def fit(self, X, y) -> "TiRexClassifier":
        """Embed the cases of ``X`` (aeon collection) once and fit the head on them and ``y``."""
        self._fit(X, y)
        self.classes_ = self.head_.classes_
        return self

    def predict(self, X) -> np.ndarray:
        """Class label of each case, (n_cases,)."""
        features = self._features(X)
        with self._head_threads():
            return self.head_.predict(features)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_cases, n_classes), columns in the order of ``classes_``."""
        features = self._features(X)
        with self._head_threads():
            return self.head_.predict_proba(features)

    @staticmethod
    def _check_targets(y, n_cases: int) -> np.ndarray:
        y = _as_labels(y, n_cases)
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y holds one class only ({classes[0]!r}); a classifier needs at least two classes")
        return y


class TiRexRegressor(RegressorMixin, _TiRexEstimator):
    """Time-series regressor (extrinsic regression): frozen TiRex embeddings + a tree-ensemble, ridge or
    gradient-boosting head. Same arguments as ``TiRexClassifier``; "linear" is a standardised ``RidgeCV``.

    Example:
        >>> reg = TiRexRegressor(random_state=0).fit(X_train, y_train)
        >>> reg.predict(X_test), reg.score(X_test, y_test)   # score: R^2
    """

    _task = "regressor"

    def fit(self, X, y) -> "TiRexRegressor":
        """Embed the cases of ``X`` (aeon collection) once and fit the head on them and ``y``."""
        return self._fit(X, y)

    def predict(self, X) -> np.ndarray:
        """Predicted target of each case, (n_cases,) float."""
        features = self._features(X)
        with self._head_threads():
            return self.head_.predict(features)

    @staticmethod
    def _check_targets(y, n_cases: int) -> np.ndarray:
        y = _as_labels(y, n_cases)
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("y must hold numbers for a regressor; for class labels use TiRexClassifier") from None
        bad = ~np.isfinite(y)
        if bad.any():
            raise ValueError(f"y has {int(bad.sum())} NaN or infinite value(s) (first at case {int(np.argmax(bad))}); "
                             "a regressor needs a finite target for every case")
        return y


def _as_labels(y, n_cases: int) -> np.ndarray:
    if y is None:
        raise ValueError("this estimator requires y to be passed, but the target y is None; pass one label per case")
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    if y.ndim == 2 and y.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn("y is a column vector (n_cases, 1); it was flattened to (n_cases,)", DataConversionWarning,
                      stacklevel=4)
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D with one label per case, got shape {y.shape}")
    if len(y) != n_cases:
        raise ValueError(f"y has {len(y)} labels but X has {n_cases} cases; pass one label per case")
    return y
