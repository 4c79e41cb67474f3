"""What the two studies of the test itself share: the validity study (:mod:`.validity`) and the
known-truth benchmark (:mod:`.known_truth`) test many configurations of the run's data, each
built by :func:`study_config`."""
from __future__ import annotations


def study_config(c, fill: str, q: float, target: str, **thresholds):
    """The test's configuration for one (fill, q, target) of a study, the run's other settings ``c``
    (a ``RunConfig``): the absolute criterion, whose distances every criterion of the study judges."""
    from ..falsification import FalsificationConfig

    return FalsificationConfig(fill=fill, q=q, K=c.K, seed=c.seed, batch_size=c.batch_size, grid=c.grid,
                               granularity=c.granularity, target=target, criterion="absolute", delta=None,
                               **thresholds)
