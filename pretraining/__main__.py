"""``python -m tirex_pretraining pretrain --config tiny_cpu --output-dir runs/tiny``."""

import sys

from .cli import main

sys.exit(main())
