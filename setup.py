"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

eval/, pretraining/ and cuda/ live at the top of the repository and install as tirex_eval,
tirex_pretraining and tirex_cuda. Every folder below a package that holds data files (bundled
weights, published results, configs) is listed as a package too: setuptools warns about each
one it finds unlisted, and there are dozens (one per published GIFT-Eval submission).
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOTS = {"tirex": "tirex", "tirex_eval": "eval", "tirex_pretraining": "pretraining", "tirex_cuda": "cuda"}


def _packages(name: str, folder: str) -> list[str]:
    subs = find_namespace_packages(where=str(Path(__file__).parent / folder), exclude=["*__pycache__*"])
    return [name] + [f"{name}.{sub}" for sub in subs if all(part.isidentifier() for part in sub.split("."))]


setup(
    packages=[pkg for name, folder in ROOTS.items() for pkg in _packages(name, folder)],
    package_dir=ROOTS,
)
