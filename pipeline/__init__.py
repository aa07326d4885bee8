"""facepipe's library: core plumbing, data, faces, model, train, evaluate, serve, and the CLI (one stage a folder).

Importing the package applies the process-wide runtime tuning (`pipeline.core.env`) before torch loads.
"""

from pipeline.core import env as _env  # noqa: F401  (side effect: OMP_WAIT_POLICY=PASSIVE before torch/OpenMP)
