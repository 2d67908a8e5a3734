"""The app's benchmarks (``cocopath --bench-viewer / --bench-annotations / --bench-predictions /
--bench-first-field / --bench-training OUT.json``), one module each, sharing :mod:`app.bench.common`.

Only the command line's dispatch (``app.__main__.run_benchmark``) imports this package, and only
when a benchmark is asked for; the benchmarks import the app, never the other way round (an
import-linter contract in pyproject.toml).
"""
