"""Run the exporter with ``python -m celery_exporter``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
