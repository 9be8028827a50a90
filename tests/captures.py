"""Real requests and answers of the CLIs, recorded through a proxy (see shared/clients in the
project's steering repo); copied here so every clone has its fixtures. A missing file is a
failure, never a skip."""

from pathlib import Path

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
