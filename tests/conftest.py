"""Puts tests/ on the import path, so every Python suite can `import sidecar_process`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
