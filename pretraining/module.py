"""The ``LightningModule``: xLSTM initialisation, masked pinball loss, AdamW with warm-up + cosine."""

from __future__ import annotations

import math

import lightning as L
import torch

from tirex import TiRexModel
from tirex.scaling import fit_scale, patch_tokens

from .config import TrainConfig, load_config

# Scaled targets farther than this from the context's mean (in context standard deviations) are not
# forecastable from the context: typically a run of zeros (scale 1e-5) followed by data. They are
# left out of the loss like missing values; otherwise the model learns to forecast huge jumps after
# every constant context.
SCALED_TARGET_LIMIT = 100.0


def init_tirex_weights(model: TiRexModel) -> TiRexModel:
    """xLSTM initialisation of the sLSTM layers, in place.

    Recurrent matrix R = 0; gate weights N(0, sqrt(2 / (5 E))); biases 0 except the forget gate, whose
    bias for block b of B and unit j of DH is ``-(-5 + 12 * (j / (DH - 1)) ** (0.3 + 1.3 * b / (B - 1)))``:
    a spread of memory time scales that grows with depth.
    """
    cfg = model.config
    blocks = len(model.blocks)
    dh = cfg.head_dim
    j = torch.arange(dh, dtype=torch.float32) / max(dh - 1, 1)
    with torch.no_grad():
        for b, block in enumerate(model.blocks):
            layer = block.slstm
            for w in (layer.input_gate, layer.forget_gate, layer.cell_gate, layer.output_gate):
                torch.nn.init.normal_(w, std=math.sqrt(2.0 / (5 * cfg.embed_dim)))
            layer.recurrent.zero_()
            layer.bias.zero_()
            exponent = 0.3 + 1.3 * b / max(blocks - 1, 1)
            layer.bias[:, 1, :] = -(-5.0 + 12.0 * j**exponent)  # gate axis order (input, forget, cell, output)
    return model


def pinball_loss(quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss over observed targets.

    Args:
        quantiles: (..., Q, P) predicted quantiles.
        target: (..., P), NaN = missing (masked out).
        levels: (Q,) quantile levels.
    """
    observed = ~torch.isnan(target)
    y = torch.nan_to_num(target).unsqueeze(-2)
    diff = y - quantiles.float()
    q = levels.view(-1, 1)
    loss = torch.maximum(q * diff, (q - 1) * diff)
    loss = torch.where(observed.unsqueeze(-2), loss, torch.zeros_like(loss))
    count = observed.sum() * levels.numel()
    return loss.sum() / count.clamp(min=1)


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TiRexPretrainModule(L.LightningModule):
    """Next-patch quantile training of a ``TiRexModel`` at every token.

    Scaling uses the context only (its observed, unmasked values); targets are scaled with the
    same loc/scale, and NaN targets are masked out of the loss.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config: TrainConfig = load_config(config)
        self.model = init_tirex_weights(TiRexModel(self.config.model))
        backend = self.config.trainer.slstm_backend
        if backend != "auto" and hasattr(self.model, "set_backend"):
            self.model.set_backend(backend)
        self.register_buffer("levels", torch.tensor(self.config.model.quantile_levels), persistent=False)

    def scaled_forward(self, inputs: torch.Tensor):
        """inputs (batch, L) with NaN -> scaled quantiles (batch, tokens, Q, P), loc, scale (batch, 1)."""
        inputs = inputs.float()
        loc, scale = fit_scale(inputs)
        tokens = patch_tokens((inputs - loc) / scale, self.config.model.patch_size)
        return self.model(tokens), loc, scale

    def _scaled(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Targets in the context's scale; values beyond ``SCALED_TARGET_LIMIT`` become NaN (masked)."""
        scaled = (x.float() - loc) / scale
        return torch.where(scaled.abs() <= SCALED_TARGET_LIMIT, scaled, torch.full_like(scaled, float("nan")))

    def loss(self, batch) -> torch.Tensor:
        """Pinball loss of the next-patch forecasts at every token of a training batch."""
        out, loc, scale = self.scaled_forward(batch["inputs"])
        p = self.config.model.patch_size
        targets = self._scaled(batch["targets"], loc, scale).view(out.shape[0], -1, p)  # (batch, tokens, P)
        return pinball_loss(out, targets, self.levels)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, logger=True, batch_size=batch["inputs"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        inputs, targets, naive = batch
        # Validate the exact function being trained: tirex switches to a separately tuned forecasting
        # path when grad is off, so run the training path and drop the graph.
        with torch.enable_grad():
            out, loc, scale = self.scaled_forward(inputs)
        last = out[:, -1].detach()  # (batch, Q, P): forecast of the held-out patch
        loc, scale = loc.detach(), scale.detach()
        y = self._scaled(targets, loc, scale)
        sn = self._scaled(naive, loc, scale).unsqueeze(1).expand_as(last)
        n = inputs.shape[0]
        self.log("val_loss", pinball_loss(last, y, self.levels), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_seasonal_naive_loss", pinball_loss(sn, y, self.levels), batch_size=n, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val_loss" in metrics and "val_seasonal_naive_loss" in metrics:
            ratio = metrics["val_loss"] / metrics["val_seasonal_naive_loss"].clamp(min=1e-12)
            self.log("val_relative_to_seasonal_naive", ratio, prog_bar=True)

    def configure_optimizers(self):
        o = self.config.optim
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # biases and norm weights
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas,
        )
        max_steps = self.config.trainer.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, o.warmup_steps, max_steps, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
