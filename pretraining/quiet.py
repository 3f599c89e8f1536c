"""Lightning's messages that tell our users nothing, silenced in one place for pretraining and fine-tuning.

Only these are dropped; every other warning and message of Lightning still shows:
- the ``LeafSpec`` deprecation that Lightning itself triggers with this torch (nothing a user can change),
- the advertisement for a cloud logger printed by every ``Trainer``,
- on a resumed run only, "Checkpoint directory ... exists and is not empty" (resuming reuses it on purpose).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


@contextlib.contextmanager
def quiet_lightning(resuming: bool = False):
    """Within: Lightning without the messages listed in this module's docstring."""
    tips = _DropTips()
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            if resuming:
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            yield
    finally:
        logger.removeFilter(tips)
