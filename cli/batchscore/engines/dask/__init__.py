"""``--engine dask``: the driver (:mod:`.driver`: folder, partitions, cluster, progress,
manifest) and the worker task (:mod:`.task`: one partition into its part file).

Importing this package imports no Dask: the driver and the task import it when they run.
"""

from batchscore.engines.dask.driver import refuse, start

__all__ = ["refuse", "start"]
