"""Ray's search algorithm of a sweep: the variant generator (grid and random), or for ``optuna`` a seeded TPE
study inside every grid cell (grid values x ablation arms), so a grid mixed with Optuna is exhaustive over the
grid and adaptive over the rest. Imports Ray and Optuna."""

from __future__ import annotations

import pickle
from typing import Any

from optuna.samplers import TPESampler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from tuneclust.space import SearchSpace, domain


class CellSearcher(Searcher):
    """Optuna TPE within each grid cell: every cell gets ``per_cell`` trials from its own seeded study."""

    def __init__(self, space: SearchSpace, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.cells = space.cells()
        sampled = {k: domain(d) for k, d in space.sampled_dims().items()}
        per_cell = space.num_samples if sampled else 1
        seed, n_startup = space.seed, space.n_startup_trials
        self.searchers = [
            OptunaSearch(
                space=sampled,
                metric=metric,
                mode=mode,
                sampler=TPESampler(seed=seed + i, n_startup_trials=n_startup),
            )
            if sampled
            else None
            for i in range(len(self.cells))
        ]
        self.remaining = [per_cell] * len(self.cells)
        self.owner: dict[str, int] = {}
        self.cursor = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **kw: Any) -> bool:
        return True  # metric, mode and space were fixed at construction

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(len(self.cells)):
            i, self.cursor = self.cursor, (self.cursor + 1) % len(self.cells)
            if self.remaining[i] > 0:
                break
        else:
            return Searcher.FINISHED
        self.remaining[i] -= 1
        self.owner[trial_id] = i
        point = dict(self.cells[i])
        if self.searchers[i] is not None:
            point.update(self.searchers[i].suggest(trial_id))
        return point

    def _cell_searcher(self, trial_id: str) -> Any:
        return self.searchers[self.owner[trial_id]] if trial_id in self.owner else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if (s := self._cell_searcher(trial_id)) is not None:
            s.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (s := self._cell_searcher(trial_id)) is not None:
            s.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def build_searcher(space: SearchSpace, metric: str, mode: str, max_concurrent: int | None) -> Any:
    """Ray's search algorithm: the variant generator, or :class:`CellSearcher` for optuna."""
    if space.searcher == "optuna":
        searcher: Any = CellSearcher(space, metric, mode)
        return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=max_concurrent or 0)
