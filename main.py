"""Loom: `python main.py` opens the editor; `python main.py run WORKFLOW` runs one headless."""
import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
