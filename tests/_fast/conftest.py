"""Make the shared strategies module importable under pytest's `--import-mode=importlib`.

That mode leaves sys.path alone and tests/ has no packages, so the kernel tests' helper
module `fast_strategies.py` is put on the path here.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
