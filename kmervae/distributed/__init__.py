"""Ray: Ray Data over the feature files, Ray Train DDP runs, Ray Tune sweeps, their console,
live view and reports, and why a run failed.

May import every other subpackage (`features` among them, to featurize the bundled
examples for a sweep given no data); only the CLI and
`sweeps/` import it. Ray is imported lazily, inside the functions that need it.
"""
