"""Weights on disk: our folder format and the published TiRex checkpoint layout.

Our format is a folder with ``config.json`` (``ModelConfig``) and ``model.safetensors``.
The published layout is a Lightning ``model.ckpt`` whose ``state_dict`` uses the reference's
module names. This module is the one place that maps between the two, including the
reference's swapped ``fgate``/``igate`` names. Nothing here unpickles arbitrary objects:
``torch.load`` always runs with ``weights_only=True``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from .config import CONFIG_NAME, OFFICIAL_CKPT_NAME, WEIGHTS_NAME, CheckpointError, ModelConfig  # noqa: F401
from .inference import column_major


# reference name -> our name; block-level names are relative to ``blocks.<i>.``
_TOP_LEVEL = {
    "input_patch_embedding.hidden_layer": "patch_embedding.hidden",
    "input_patch_embedding.output_layer": "patch_embedding.output",
    "input_patch_embedding.residual_layer": "patch_embedding.residual",
    "output_patch_embedding.hidden_layer": "head.hidden",
    "output_patch_embedding.output_layer": "head.output",
    "output_patch_embedding.residual_layer": "head.residual",
    "out_norm": "out_norm",
}
_BLOCK_LEVEL = {
    "norm_slstm.weight": "norm_slstm.weight",
    "slstm_layer.fgate.weight": "slstm.input_gate",  # the reference's "fgate" drives the input gate
    "slstm_layer.igate.weight": "slstm.forget_gate",  # and its "igate" the forget gate
    "slstm_layer.zgate.weight": "slstm.cell_gate",
    "slstm_layer.ogate.weight": "slstm.output_gate",
    "slstm_layer.slstm_cell._recurrent_kernel_": "slstm.recurrent",
    "slstm_layer.slstm_cell._bias_": "slstm.bias",
    "slstm_layer.group_norm.weight": "slstm.norm_weight",
    "norm_ffn.weight": "norm_ffn.weight",
    "ffn.proj_up_gate.weight": "ffn.gate.weight",
    "ffn.proj_up.weight": "ffn.up.weight",
    "ffn.proj_down.weight": "ffn.down.weight",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _our_name(ref_key: str) -> str:
    key = ref_key.removeprefix("block_stack.")
    match = _BLOCK_KEY.match(key)
    if match:
        index, rest = match.groups()
        if rest in _BLOCK_LEVEL:
            return f"blocks.{index}.{_BLOCK_LEVEL[rest]}"
    else:
        for ref_prefix, ours in _TOP_LEVEL.items():
            if key.startswith(ref_prefix + "."):
                return ours + key[len(ref_prefix) :]
    raise CheckpointError(f"unexpected tensor {ref_key!r} in a TiRex checkpoint")


def _ref_name(our_key: str) -> str:
    match = _BLOCK_KEY.match(our_key)
    if match:
        index, rest = match.groups()
        for ref, ours in _BLOCK_LEVEL.items():
            if ours == rest:
                return f"blocks.{index}.{ref}"
    for ref_prefix, ours in _TOP_LEVEL.items():
        if our_key.startswith(ours + "."):
            return ref_prefix + our_key[len(ours) :]
    raise KeyError(our_key)


def from_reference_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and reshape the sLSTM bias of) a reference state dict into ours."""
    out = {}
    for key, value in state.items():
        name = _our_name(key)
        if name.endswith("slstm.bias"):
            value = value.reshape(config.num_heads, 4, config.head_dim)  # laid out [head, gate, unit]
        out[name] = value
    return out


def to_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the reference's names and shapes (without the ``block_stack.`` prefix)."""
    return {_ref_name(k): (v.reshape(-1) if k.endswith("slstm.bias") else v) for k, v in state.items()}


def config_from_reference(hparams: dict) -> ModelConfig:
    """``ModelConfig`` from a reference checkpoint's ``hyper_parameters`` (unknown keys ignored)."""
    try:
        mc = hparams["model_config"]
        blocks = mc["block_kwargs"]
        if mc.get("input_patch_size") != mc.get("output_patch_size"):
            raise CheckpointError("input and output patch sizes differ; only equal sizes are supported")
        return ModelConfig(
            patch_size=int(mc["input_patch_size"]),
            context_length=int(hparams["train_ctx_len"]),
            embed_dim=int(blocks["embedding_dim"]),
            num_heads=int(blocks["num_heads"]),
            num_blocks=int(blocks["num_blocks"]),
            input_ff_dim=int(mc["input_ff_dim"]),
            quantile_levels=tuple(mc["quantiles"]),
            recurrence_dtype="bfloat16",
        )
    except KeyError as exc:
        raise CheckpointError(f"TiRex checkpoint hyper_parameters lack the key {exc.args[0]!r}") from exc


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, without torch's advice to retry with weights_only=False
    (that would unpickle arbitrary code from the file)."""
    text = str(exc)
    if "Unsupported global" in text:
        return (f"refusing to load {path}: it holds pickled Python objects other than tensors and plain "
                "containers, which could run code when unpickled; only weights are loaded")
    if isinstance(exc, (EOFError, zipfile.BadZipFile)) or "zip" in text.lower() or "EOF" in text:
        return f"cannot read {path}: corrupt or truncated checkpoint (not a complete torch zip archive)"
    if "weights_only" in text or type(exc).__name__ == "UnpicklingError":
        return f"cannot read {path}: not a torch checkpoint, or a damaged one (its bytes do not unpickle)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot read {path}: not a readable torch checkpoint ({first[:200]})"


def read_reference_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a published-layout ``model.ckpt`` safely; returns our config and our state dict."""
    path = Path(path)
    try:
        # Not memory-mapped: load_state_into copies every tensor once (into the inference layout) and frees
        # the one read, so reading into plain memory keeps the peak at about one copy of the weights; a
        # mapped file would stay resident next to the copies until the end of loading.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a TiRex checkpoint (needs 'state_dict' and 'hyper_parameters')")
    config = config_from_reference(ckpt["hyper_parameters"])
    return config, from_reference_state_dict(ckpt["state_dict"], config)


def write_reference_checkpoint(model, path: str | Path) -> None:
    """Write ``model`` in the published ``model.ckpt`` layout (for tools that expect it)."""
    cfg = model.config
    state = {}
    for k, v in to_reference_state_dict(model.state_dict()).items():
        state[k if not (k.startswith("blocks.") or k.startswith("out_norm")) else "block_stack." + k] = v.contiguous()
    hparams = {
        "model_config": {
            "input_patch_size": cfg.patch_size,
            "output_patch_size": cfg.patch_size,
            "quantiles": list(cfg.quantile_levels),
            "block_kwargs": {
                "all_slstm": True,
                "embedding_dim": cfg.embed_dim,
                "num_blocks": cfg.num_blocks,
                "num_heads": cfg.num_heads,
                "return_last_states": True,
                "vocab_size": 0,
            },
            "input_ff_dim": cfg.input_ff_dim,
        },
        "train_ctx_len": cfg.context_length,
    }
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({exc})") from exc


def is_reference_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("input_patch_embedding.") for k in state)


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` unless ``state`` has exactly the names, shapes and float dtypes of ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the config needs {tuple(expected[key].shape)}"
            )
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key!r} has dtype {value.dtype}, expected a float tensor")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming the first tensor with NaN or inf values (a diverged run, a bad file)."""
    for key, value in state.items():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {int(bad.sum())} NaN/inf value(s) of {value.numel()}; every forecast "
                "would be NaN. The checkpoint is broken (a diverged training run, or a damaged file)"
            )


def load_state_into(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``, checking names, shapes and finiteness first."""
    check_state(model.state_dict(), state, source)
    check_finite(state, source)
    # assign=True adopts the loaded tensors (works for models built on the meta device, too). Every tensor
    # is copied once into the process's own memory, nn.Linear weights column-major (the layout the
    # inference matmuls read fastest, see tirex.inference.use_matmul_layout_): nothing then refers to a
    # memory-mapped checkpoint any more, so its pages leave the process's resident memory.
    linear = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    owned = {}
    for key in list(state):
        value = state.pop(key).float()
        copy = column_major(value) if key in linear else value
        owned[key] = copy if copy is not value else value.clone(memory_format=torch.contiguous_format)
        del value, copy
    model.load_state_dict(owned, assign=True)
