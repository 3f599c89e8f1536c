"""``python -m tirex_eval --suite offline --model seasonal_naive``"""

import sys

from .cli import main

sys.exit(main())
