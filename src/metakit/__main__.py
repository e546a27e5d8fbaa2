"""``python -m metakit`` (also what ``torchrun -m metakit`` runs)."""

from metakit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
