"""``load_model``: the bundled default, local folders and checkpoints, and Hugging Face Hub repos."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from .checkpoint import (
    CONFIG_NAME,
    OFFICIAL_CKPT_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    from_reference_state_dict,
    is_reference_state_dict,
    load_state_into,
    read_reference_checkpoint,
    read_safetensors,
)
from . import inference
from .config import ModelConfig, bundled_model_dir
from .model import TiRexModel
from .validation import check_device

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _build(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> TiRexModel:
    # Build without allocating or initialising weights: the loaded tensors are assigned in place,
    # so peak memory is one copy of the weights, not two.
    with torch.device("meta"):
        model = TiRexModel(config)
    if is_reference_state_dict(state):
        state = from_reference_state_dict(state, config)
    load_state_into(model, state, source)
    return model.eval()


def _load_folder(folder: Path) -> TiRexModel:
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        config = ModelConfig.load(folder / CONFIG_NAME)
        return _build(config, read_safetensors(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    if (folder / OFFICIAL_CKPT_NAME).is_file():
        return _load_reference(folder / OFFICIAL_CKPT_NAME)
    raise FileNotFoundError(
        f"{folder} holds neither {CONFIG_NAME} + {WEIGHTS_NAME} (our format) nor {OFFICIAL_CKPT_NAME} (published TiRex layout)"
    )


def _load_reference(path: Path) -> TiRexModel:
    config, state = read_reference_checkpoint(path)
    return _build(config, state, str(path))


def _load_local(path: Path) -> TiRexModel:
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".ckpt":
        return _load_reference(path)
    if path.suffix == ".safetensors":
        config_path = path.with_name(CONFIG_NAME)
        if not config_path.is_file():
            raise FileNotFoundError(f"{path} needs a {CONFIG_NAME} next to it")
        return _build(ModelConfig.load(config_path), read_safetensors(path), str(path))
    raise ValueError(f"{path}: expected a model folder, a .ckpt or a .safetensors file")


# The HTTP clients huggingface_hub has used: requests (< 1.0; its errors are OSErrors), httpx (1.x), httpx2 (2.x).
HTTP_CLIENTS = ("httpx", "httpx2")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failed Hub request raises with the installed huggingface_hub: OSError and the base
    error of its HTTP client (those already imported: huggingface_hub imports its own)."""
    errors: list[type[BaseException]] = [OSError]
    for name in HTTP_CLIENTS:
        error = getattr(sys.modules.get(name), "HTTPError", None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hub endpoint (``HF_ENDPOINT``) cannot be reached, or None when it answers.

    One request through huggingface_hub's own HTTP session (so proxies and certificates are the same),
    without retries: an offline machine learns it in at most ``timeout_s`` seconds instead of after
    huggingface_hub's retries with backoff (about 25 s of "Retrying in 8s" messages).
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except _network_errors() as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _load_hub(repo_id: str, revision, token, cache_dir, local_files_only) -> TiRexModel:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(name: str) -> Path:
        return Path(
            hf_hub_download(
                repo_id,
                name,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )

    if not local_files_only and not constants.HF_HUB_OFFLINE:
        reason = hub_unreachable()
        if reason is not None:  # the cache may still have the files: no network request from here on
            try:
                return _load_hub(repo_id, revision, token, cache_dir, local_files_only=True)
            except OSError:
                raise OSError(
                    f"could not download {repo_id!r}: the Hugging Face Hub at {constants.ENDPOINT} is unreachable "
                    f"({reason[:160]}) and the files are not in the cache; connect to the internet, set HF_ENDPOINT to "
                    "a mirror, or download the model elsewhere and pass its folder"
                ) from None
    try:
        try:
            config_path = fetch(CONFIG_NAME)
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: check it first
            raise
        except EntryNotFoundError:
            return _load_reference(fetch(OFFICIAL_CKPT_NAME))
        weights_path = fetch(WEIGHTS_NAME)
        return _build(ModelConfig.load(config_path), read_safetensors(weights_path), f"{repo_id}/{WEIGHTS_NAME}")
    except LocalEntryNotFoundError as exc:
        raise OSError(
            f"could not download {repo_id!r}: the Hub is unreachable or offline mode is on, and the files are not in the cache"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ValueError(f"Hub repo {repo_id!r} was not found (or needs a token); check the name") from exc
    except RevisionNotFoundError as exc:
        raise ValueError(f"revision {revision!r} does not exist in Hub repo {repo_id!r}") from exc
    except EntryNotFoundError as exc:
        raise ValueError(f"Hub repo {repo_id!r} has no {CONFIG_NAME}/{WEIGHTS_NAME} or {OFFICIAL_CKPT_NAME}") from exc
    except _network_errors() as exc:
        raise OSError(f"downloading {repo_id!r} from the Hub failed: {exc}") from exc


def load_model(
    source: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    recurrence_dtype: str | None = None,
) -> TiRexModel:
    """Load a forecaster.

    Args:
        source: None for the bundled default model; a local folder (``config.json`` +
            ``model.safetensors``, or the published ``model.ckpt``); a ``.ckpt`` / ``.safetensors``
            file; or a Hugging Face Hub repo id such as ``"NX-AI/TiRex"`` (cached by
            ``huggingface_hub``; honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``).
        device: where to put the model (default CPU); one that does not exist here is a ``ValueError``.
        revision, token, cache_dir, local_files_only: passed to ``huggingface_hub``.
        recurrence_dtype: override the checkpoint's recurrence numerics ("bfloat16" or "float32").

    Example:
        >>> model = load_model()                      # bundled default, offline
        >>> q, mean = model.forecast(torch.randn(2, 500), prediction_length=24)
    """
    device = check_device(device)  # a clear error for "cuda" on a CPU-only build, before any loading
    inference.return_large_blocks_to_the_os()  # tensors freed while loading go back to the OS at once
    if source is None:
        folder = bundled_model_dir()
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                "no default model is bundled with this installation; pass a folder, a checkpoint or a Hub repo id"
            )
        model = _load_folder(folder)
    else:
        path = Path(os.fspath(source)).expanduser()
        if path.exists():
            model = _load_local(path)
        elif isinstance(source, str) and _REPO_ID.match(source) and not source.startswith((".", "/", "~")):
            model = _load_hub(source, revision, token, cache_dir, local_files_only)
        else:
            raise ValueError(f"unknown model source {str(source)!r}: not an existing path and not a Hub repo id (owner/name)")
    if recurrence_dtype is not None:
        model.set_recurrence_dtype(recurrence_dtype)
    if device is not None:
        model.to(device)
    return model.prepare_inference()  # one-off inference work here, not in the first forecast


def save_pretrained(model: TiRexModel, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        model.config.save(Path(tmp) / CONFIG_NAME)
        save_file(state, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt", "library": "tirex"})
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            os.replace(Path(tmp) / name, directory / name)
    return directory


def push_to_hub(model: TiRexModel, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload TiRex model") -> str:
    """Upload ``config.json`` + ``model.safetensors`` to a Hub repo (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(info)


def model_digest(model) -> str:
    """SHA-256 over the model's config and tensors (the safetensors bytes themselves are not reproducible:
    the file's tensor order may change between processes)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


__all__ = ["load_model", "save_pretrained", "push_to_hub", "bundled_model_dir", "model_digest", "CheckpointError"]
