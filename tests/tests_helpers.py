"""Small helpers shared by tests (importable because pytest puts the repo root on the path)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
