"""The app's guarded imports: `core.optional` (one helper for the engine, the benchmarks and the UI)."""
from core.optional import NOT_AVAILABLE, optional, optional_attr  # noqa: F401
