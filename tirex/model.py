"""The TiRex network: patch embedding -> sLSTM blocks -> quantile head, and its multi-patch rollout."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import ModelConfig
from . import cpu_forward, inference
from .backends import check_backend
from .inputs import FIXED_COST_WINDOWS
from .layers import ResidualBlock, RMSNorm
from .rollout import ArrayOps, rollout, shared_empty_lead
from .scaling import fit_scale, patch_tokens, window
from .slstm import SLSTMBlock, SLSTMState
from .validation import check_float32_model, check_tokens

if TYPE_CHECKING:
    from .streaming import Stream


def forward_fixed_rows(config: ModelConfig) -> int:
    """A forward's fixed cost in token rows (``FIXED_COST_WINDOWS`` full windows): what a batch plan or the
    shared empty start weighs an extra forward against."""
    return FIXED_COST_WINDOWS * config.num_tokens


class TiRexModel(nn.Module):
    """An sLSTM-only xLSTM over patches of a series, predicting quantiles of the next patch at every token.

    Example:
        >>> model = TiRexModel(ModelConfig(embed_dim=64, num_heads=4, num_blocks=2, input_ff_dim=128, context_length=256))
        >>> model.predict_patches(torch.randn(3, 256), num_patches=2).shape
        torch.Size([3, 2, 9, 32])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        p, e = config.patch_size, config.embed_dim
        self.patch_embedding = ResidualBlock(2 * p, config.input_ff_dim, e)
        self.blocks = nn.ModuleList(
            SLSTMBlock(e, config.num_heads, config.ffn_dim, config.recurrence_dtype) for _ in range(config.num_blocks)
        )
        self.out_norm = RMSNorm(e)
        self.head = ResidualBlock(e, config.input_ff_dim, len(config.quantile_levels) * p)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        tokens: torch.Tensor,
        states: list[SLSTMState] | None = None,
        return_states: bool = False,
        last_tokens: int | None = None,
        return_hidden: bool = False,
        snapshot_at: int | None = None,
    ):
        """Scaled quantiles of the patch after each token.

        Args:
            tokens: (batch, tokens, 2 * patch_size) from ``patch_tokens``, on the model's device (another real
                dtype is converted to float32; other shapes, NaN / inf, a model converted from float32 are
                clear errors: ``tirex.validation.check_tokens`` / ``check_float32_model``).
            states: per-block starting states (a continued stream), or None for a fresh sequence.
            last_tokens: apply the quantile head to the last ``last_tokens`` tokens only (None = all).
            return_hidden: return the output of every block instead of quantiles (no head; see
                ``tirex.embedding``): a list of ``num_blocks`` (batch, tokens, embed) float32 tensors.
            snapshot_at: also return the per-block states after the first ``snapshot_at`` tokens (the states
                a forward of those tokens alone ends in), last.
        Returns:
            (batch, tokens, quantiles, patch_size); with ``return_states`` also the final per-block states;
            with ``snapshot_at`` also the states after ``snapshot_at`` tokens.
        """
        if snapshot_at is not None and return_hidden:
            raise ValueError("snapshot_at does not combine with return_hidden")
        tokens = check_tokens(tokens, self.config.patch_size, next(self.parameters()).device)
        fast = not torch.is_grad_enabled()  # no-grad: chunked, in-place feed-forward parts (tirex.inference)
        plan = cpu_forward.compiled_forward(self) if fast and tokens.device.type == "cpu" else None
        if plan is not None and plan.takes(last_tokens):
            out, new_states, snapshots = plan(tokens, states, last_tokens, return_hidden, snapshot_at)
        else:  # (a prepared forward exists only for float32 weights)
            check_float32_model(self)
            out, new_states, snapshots = self._forward_layers(tokens, states, last_tokens, return_hidden, snapshot_at)
        if return_hidden:
            return out
        result = (out, new_states) if return_states else (out,)
        if snapshot_at is not None:
            result = (*result, snapshots)
        return result if len(result) > 1 else out

    def _forward_layers(self, tokens, states, last_tokens, return_hidden, snapshot_at):
        """``forward`` layer by layer (training, GPUs, the fast mode, torch's matmuls; on CPU with the
        compiled kernels ``tirex.cpu_forward`` runs the same calls): (quantiles or the blocks' outputs, final
        states, snapshot states)."""
        fast = not torch.is_grad_enabled()
        if fast and tokens.device.type == "cpu":
            inference.use_matmul_layout_(self)
        dtype = self.blocks[0].slstm.matmul_dtype if len(self.blocks) else torch.float32
        with inference.workspace() if fast else nullcontext():
            h = inference.residual_block(tokens, self.patch_embedding, dtype) if fast else self.patch_embedding(tokens)
            new_states, hidden, snapshots = [], [], []
            for i, block in enumerate(self.blocks):
                # the last block's feed-forward only needs the tokens the head will read
                keep = last_tokens if i == len(self.blocks) - 1 and not return_hidden else None
                h, state, *snapshot = block(h, None if states is None else states[i], keep_last=keep,
                                            snapshot_at=snapshot_at)
                new_states.append(state)
                snapshots.extend(snapshot)
                if return_hidden:  # a copy: the fast path reuses the residual-stream buffers
                    hidden.append(h.clone())
            if return_hidden:
                return hidden, new_states, snapshots
            if last_tokens is not None:
                h = h[:, -last_tokens:]
            if fast:
                out = inference.residual_block(inference.rms_norm(h, self.out_norm), self.head, dtype)
            else:
                out = self.head(self.out_norm(h))
        out = out.view(*out.shape[:2], len(self.config.quantile_levels), self.config.patch_size)
        return out, new_states, snapshots

    @torch.no_grad()
    def predict_patches(self, context: torch.Tensor, num_patches: int = 1) -> torch.Tensor:
        """One forecasting pass: quantiles of the next ``num_patches`` patches in data units.

        Args:
            context: (batch, time) float32, NaN = missing.
            num_patches: patches predicted in this pass; beyond the first, empty tokens are appended.
        Returns:
            (batch, num_patches, quantiles, patch_size).
        """
        cfg = self.config
        x = window(context.float(), cfg.context_length)
        loc, scale = fit_scale(x)
        tokens = patch_tokens((x - loc) / scale, cfg.patch_size)
        if num_patches > 1:
            empty = tokens.new_zeros(tokens.shape[0], num_patches - 1, tokens.shape[2])
            tokens = torch.cat([tokens, empty], dim=1)
        lead = shared_empty_lead(tokens, keep=num_patches)
        known = self._prefix_known() if lead > 0 else {}
        batch = tokens.shape[0]
        if lead > 0 and lead not in known and (batch - 1) * lead <= lead + forward_fixed_rows(cfg):
            # states of a new empty-start length: from this very forward (the first ``lead`` tokens are the
            # same in every row) rather than from a forward of their own, where the extra rows cost less
            out, snapshot = self(tokens, last_tokens=num_patches, snapshot_at=lead)
            # the key again: a model's first forward moves its weights into the matmul layout (new memory)
            self._prefix_known()[lead] = [SLSTMState(*(t[:, :1].detach().clone() for t in s)) for s in snapshot]
        else:
            states = self.empty_prefix_states(lead, batch, known) if lead > 0 else None
            out = self(tokens[:, lead:], states, last_tokens=num_patches)
        return out * scale.view(-1, 1, 1, 1) + loc.view(-1, 1, 1, 1)

    def skip_empty_start(self, tokens: torch.Tensor, keep: int = 1) -> tuple[torch.Tensor, list[SLSTMState] | None]:
        """(tokens after the leading ones that are empty in every series, the states after those) for a fresh
        forward: left padding of short series and missing starts take every series through the same states,
        computed once (``empty_prefix_states``). At least the last ``keep`` tokens are kept."""
        lead = shared_empty_lead(tokens, keep)
        if lead <= 0:
            return tokens, None
        return tokens[:, lead:], self.empty_prefix_states(lead, tokens.shape[0])

    @torch.no_grad()
    def empty_prefix_states(self, length: int, batch: int = 1, known: dict | None = None) -> list[SLSTMState]:
        """Per-block states after ``length`` empty tokens (an all-NaN patch: values 0, mask 0) from a fresh start.

        The token input is the same for every series there, so these states are too: a batch of short
        series, left-padded to the window, need not step each series through its padding. Computed once per
        length at batch 1 (continuing from the longest shorter length already known) and kept until a
        parameter, the numerics or the kernels change; returned expanded to ``batch`` rows (views). A forward
        from them gives the same bits as a forward over the padding wherever a row's result does not depend
        on the other rows (the compiled CPU kernels: README "Speed"); elsewhere the same values up to float
        rounding, as between batch compositions. ``predict_patches`` also fills in lengths from its own
        forwards (``snapshot_at``). ``known``: ``_prefix_known()``'s result, where the caller has it.
        """
        known = self._prefix_known() if known is None else known
        if length not in known:
            start = max(k for k in list(known) if k < length)
            empty = torch.zeros(1, length - start, 2 * self.config.patch_size, device=next(self.parameters()).device)
            _, states = self(empty, known[start], return_states=True, last_tokens=1)
            states = [SLSTMState(*(t.detach().clone() for t in s)) for s in states]
            self._prefix_known()[length] = states  # the key again (see predict_patches)
        else:
            states = known[length]
        return [SLSTMState(*(t.expand(-1, batch, -1) for t in s)) for s in states]

    def _prefix_known(self) -> dict[int, list[SLSTMState] | None]:
        """The cached empty-start states by length, for the current weights, numerics and kernels."""
        key = self._prefix_key()
        cache = self.__dict__.get("_prefix_cache")
        if cache is None or cache[0] != key:
            cache = (key, {0: None})
            self.__dict__["_prefix_cache"] = cache  # not an nn.Module attribute: no state dict entry
        return cache[1]

    def _prefix_key(self) -> tuple:
        """What the empty-prefix states depend on besides the length: every parameter (in-place updates bump
        ``_version``), the numerics, the backends and the CPU kernels in use."""
        dispatch = inference.dispatch()
        settings = tuple((b.slstm.backend, b.slstm.matmul_dtype, b.slstm.recurrence_dtype) for b in self.blocks)
        first = next(self.parameters())  # moving or casting a parameter gives it new memory (data_ptr)
        return (dispatch.level, dispatch.emulated, dispatch.matmuls, settings, first.device, first.dtype,
                tuple((p._version, p.data_ptr()) for p in self.parameters()))

    @torch.no_grad()
    def rollout(
        self,
        context: torch.Tensor,
        prediction_length: int,
        rollout_steps: int = 1,
        max_masked_fraction: float | None = 0.5,
        on_patches=None,
    ) -> torch.Tensor:
        """Forecast ``prediction_length`` steps by repeated passes.

        After each pass the context is extended by NaN (the model treats the future as missing,
        which contiguous patch masking trained it for). The reference does only this, so once the
        horizon exceeds the window the forecast stops depending on the data. With
        ``max_masked_fraction`` set, at most that share of the window is left as NaN future: older
        forecast patches are filled in with their predicted median, so the window always keeps data
        (or data-derived values) in view. ``None`` reproduces the reference exactly at every horizon;
        the default 0.5 reproduces it for horizons up to half the context length.

        The cost is linear in the horizon: each pass reads only the last window.

        Args:
            context: (batch, time) float32.
            on_patches: called with the number of patches predicted after each forward (progress bars).
        Returns:
            (batch, prediction_length, quantiles) float32, as the model predicts them (not sorted).
        """
        ops = ArrayOps(cat=lambda parts, axis: torch.cat(parts, dim=axis),
                       nans=lambda rows, cols: context.new_full((rows, cols), float("nan"), dtype=torch.float32),
                       window=window)
        return rollout(context.float(), prediction_length, rollout_steps, max_masked_fraction, self.config,
                       self.predict_patches, ops, on_patches)

    # -- public API -------------------------------------------------------------------------------
    def forecast(
        self,
        context,
        prediction_length: int,
        quantile_levels=None,
        batch_size: int = 256,
        rollout_steps: int = 1,
        max_masked_fraction: float | None = 0.5,
        output_type: str | None = None,
        progress: bool | None = None,
        keep_sign: bool = False,
        **table_options,
    ):
        """Probabilistic forecast of the next ``prediction_length`` steps.

        Args:
            context: one of
                - a 1-D or 2-D ``torch.Tensor`` / ``numpy.ndarray`` (rows are series; NaN = missing);
                - a list of 1-D series of different lengths (``None`` = missing, as in JSON);
                - a ``pandas.Series`` (returns a DataFrame indexed by future timestamps);
                - a long ``pandas.DataFrame`` with id, timestamp and target columns (names detected,
                  or ``id_column=``, ``timestamp_column=``, ``target_column=``; ``layout="wide"`` for one
                  column per series; ``freq=`` to set the frequency); returns a long DataFrame. Tables
                  are read exactly as ``tirex forecast`` reads a file (``tirex.io.to_long``);
                - a GluonTS dataset (returns a list of ``QuantileForecast``).
            prediction_length: steps to forecast, 1 to 100,000 (``tirex.validation.MAX_PREDICTION_LENGTH``;
                the cost is linear in it; see ``rollout`` for long horizons).
            quantile_levels: levels in (0, 1); default the model's (0.1 ... 0.9). Others are
                interpolated between, and extrapolated beyond, the model's levels.
            batch_size: at most this many series per forward pass (series of similar length go
                together: ``tirex.inputs.plan_batches``). Results do not depend on it.
            rollout_steps: patches predicted per pass (the reference's ``max_accelerated_rollout_steps``).
            max_masked_fraction: cap on the share of the window left as masked future; None = reference.
            output_type: "torch" or "numpy" for array inputs (default: numpy for numpy input, else torch).
            progress: progress bar on stderr over the rollout; None (default) shows one for long work
                (over 1,000 passes per batch) when stderr is a terminal.
            keep_sign: clip the forecasts of a series whose observed history is all >= 0 (or all <= 0)
                at 0, so they stay on that side (counts, prices, irradiance).

        Returns:
            For array-like inputs ``(quantiles, mean)``: quantiles (batch, prediction_length, levels),
            never decreasing with the level (the model's quantiles sorted, which never worsens the
            quantile loss), and mean (batch, prediction_length), the median forecast. float32, or
            float64 when a value does not fit float32 (series beyond 3.4e38 or below 1.2e-38).

        Raises:
            ValueError / TypeError: bad data or settings, before any model work (README "Bad input").

        Example:
            >>> q, mean = model.forecast(np.sin(np.arange(300) / 5), prediction_length=48)
            >>> q.shape, mean.shape
            ((1, 48, 9), (1, 48))
        """
        from .forecast import forecast

        return forecast(
            self, context, prediction_length, quantile_levels, batch_size, rollout_steps,
            max_masked_fraction, output_type, progress, keep_sign, **table_options,
        )

    def embed(self, data, diff: bool = True, statistics: bool = True, segments: int = 8, resolutions=(1, 2, 4),
              batch_size: int = 256, per_channel: bool = False, output_type: str | None = None,
              progress: bool = False, **frame_kwargs):
        """A fixed-length vector per series, for classification, regression and similarity search.

        The vector (``tirex.embedding`` has the recipe, after Auer et al. 2025, arXiv 2510.26777) holds the
        output of every block averaged over the patches that hold data, standardised per block; with
        ``diff`` the same for the first differences, with ``statistics`` mean/std/min/max of ``segments``
        equal parts of the raw series and its log length; all of it (less the statistics) also for the series
        stretched in time by each factor in ``resolutions`` (``(1,)`` = the paper's recipe, 7x cheaper).
        Series longer than the context are embedded window by window and averaged. NaN = missing.
        Results do not depend on ``batch_size``.

        Args:
            data: what ``forecast`` accepts (1-D/2-D array or tensor, list of 1-D series, pandas Series,
                long DataFrame, GluonTS dataset), or a multivariate collection: a 3-D array
                (cases, channels, time) or a list of 2-D (channels, time) arrays; channels are embedded
                separately and concatenated (``per_channel=True``: kept on their own axis).

        Returns:
            (n, size) numpy for numpy input, torch otherwise (``output_type`` to choose); (n, channels, size)
            with ``per_channel``; a vector for a pandas Series; a DataFrame indexed by id for a DataFrame.

        Example:
            >>> model.embed(np.random.randn(5, 300)).shape   # bundled model: 3 resolutions x 2 x 3 blocks x 192 + 33
            (5, 3489)
        """
        from .embedding import embed

        return embed(self, data, diff=diff, statistics=statistics, segments=segments, resolutions=resolutions,
                     batch_size=batch_size, per_channel=per_channel, output_type=output_type, progress=progress,
                     **frame_kwargs)

    def finetune(self, data, prediction_length: int, **kwargs) -> "TiRexModel":
        """Fine-tune a copy of this model on ``data`` (needs ``pip install 'tirex[pretrain]'``).

        Holds out the last ``prediction_length`` values of each series, trains with Lightning and
        early-stops on them; returns the tuned model with its report in ``.finetune_report``. See
        ``tirex_pretraining.finetune.finetune`` for the options (``mode="full"|"head"``, ``max_steps``, ...).

        Example:
            >>> tuned = model.finetune(my_series, prediction_length=24)
            >>> print(tuned.finetune_report); tuned.save_pretrained("my-model")
        """
        from tirex_pretraining.finetune import finetune

        tuned, _ = finetune(self, data, prediction_length, **kwargs)
        return tuned

    def stream(self, context) -> Stream:
        """Start a constant-memory stream over ``context`` (see ``tirex.streaming.Stream``)."""
        from .streaming import Stream

        return Stream(self.eval(), context)

    def prepare_inference(self) -> "TiRexModel":
        """Do the one-off work of inference now rather than in the first forecast: CPU weights in the
        matmuls' layout, stacked input projections, recurrent matrices rounded (and repacked) for the
        recurrence. ``load_model`` calls it; after weights change the caches rebuild on their own."""
        if next(self.parameters()).device.type == "cpu":
            inference.use_matmul_layout_(self)
        with torch.no_grad():
            for block in self.blocks:
                block.slstm._inference_weights()
        return self

    def set_recurrence_dtype(self, recurrence_dtype: str) -> None:
        """Switch the sLSTM numerics ("bfloat16" = reference parity, "float32")."""
        self.config.recurrence_dtype = recurrence_dtype
        self.config.validate()
        for block in self.blocks:
            block.slstm.recurrence_dtype = recurrence_dtype
        self.prepare_inference()

    def backend_info(self) -> dict:
        """Which implementations this model's forecasts use here and why (CPU kernel level from the CPU's
        flags, who does the weight matmuls, fast mode, threads); see ``tirex.backends.backend_info``."""
        from .backends import backend_info

        return backend_info(self)

    def set_backend(self, backend: str) -> None:
        """Choose the sLSTM recurrence implementation: "auto" (default), "torch", "cpu" or "cuda".

        See ``tirex.backends``: "auto" uses the fused CUDA kernels on GPUs of compute capability
        >= 8.0 and the compiled C++ kernel on CPU; anything unavailable falls back to the torch loop
        with one warning.
        """
        check_backend(backend)
        for block in self.blocks:
            block.slstm.backend = backend

    def set_fast_mode(self, enabled: bool = True, force: bool = False) -> bool:
        """Opt-in fast inference: bfloat16 operands for the weight matmuls outside the recurrence.

        The recurrence keeps its numerics; forecasts move by a small fraction of the reference's
        bfloat16 noise floor (README "Opt-in fast mode" has measured speed and accuracy).
        Training (grad enabled) always runs in float32.

        On a CPU without native bfloat16 matmuls (no AVX512-BF16 / AMX; ``inference.cpu_has_fast_bf16``)
        bfloat16 matmuls are emulated and about 20x slower than float32 ones, so the model stays in the
        exact mode with a ``RuntimeWarning`` unless ``force=True``. Returns whether fast mode is on.
        """
        if enabled and not force and next(self.parameters()).device.type == "cpu" and not inference.cpu_has_fast_bf16():
            import warnings

            warnings.warn(
                "fast mode skipped: this CPU has no native bfloat16 matmuls (AVX512-BF16 / AMX), where they "
                "run about 20x slower than float32 ones; the exact mode stays on (set_fast_mode(True, force=True) "
                "to use it anyway)", RuntimeWarning, stacklevel=2,
            )
            enabled = False
        dtype = torch.bfloat16 if enabled else torch.float32
        for block in self.blocks:
            block.slstm.matmul_dtype = dtype
        self.prepare_inference()
        return enabled

    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (``load_model`` reads it)."""
        from .loading import save_pretrained

        save_pretrained(self, directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload to a Hugging Face Hub repo in our format (see ``tirex.loading.push_to_hub``)."""
        from .loading import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, source, **kwargs) -> "TiRexModel":
        """Same as ``tirex.load_model(source, **kwargs)``."""
        from .loading import load_model

        return load_model(source, **kwargs)
