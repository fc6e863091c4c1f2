"""The search space of a sweep: grid and sampled dimensions, grid cells, Ray Tune domains, the cell searcher.

One module for everything a sweep needs to know about its search space. :class:`SearchSpace` is pure Python
(the spec layer validates with it without importing Ray); :func:`domain`, :func:`param_space`,
:func:`build_searcher` and :class:`CellSearcher` import Ray when called.

Searchers: ``grid`` and ``random`` use Ray's variant generator (grid dimensions crossed, random ones sampled,
seeded); ``optuna`` runs a seeded TPE study inside every *cell* of the grid (grid values x ablation arms), so a
grid mixed with Optuna is exhaustive over the grid and adaptive over the rest.
"""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import dataclass
from typing import Any, Protocol


class Dim(Protocol):
    """One search dimension as the spec layer validated it (:class:`tuneclust.spec.SearchDim`)."""

    kind: str
    """``grid`` | ``choice`` | ``uniform`` | ``loguniform`` | ``randint`` | ``quniform``."""
    value: Any


@dataclass(frozen=True)
class SearchSpace:
    """The search section of a spec, with the searcher type, ablation arms and sample count that shape it.

    Attributes:
        search: key -> :class:`Dim` (config keys and ``data.<field>`` keys).
        arms: ablation arm names (``[""]`` without an ablation).
        searcher: ``grid`` | ``random`` | ``optuna``.
        num_samples: random: repeats of the space; optuna: trials per grid cell.
        seed: seeds the random searcher and Optuna's samplers.
        n_startup_trials: Optuna: random trials per grid cell before TPE takes over.
    """

    search: dict[str, Dim]
    arms: tuple[str, ...]
    searcher: str
    num_samples: int
    seed: int = 0
    n_startup_trials: int = 10

    def grid_dims(self) -> dict[str, list[Any]]:
        """Dimensions enumerated exhaustively (grid; and choice under the grid searcher)."""
        return {
            k: list(d.value)
            for k, d in self.search.items()
            if d.kind == "grid" or (d.kind == "choice" and self.searcher == "grid")
        }

    def sampled_dims(self) -> dict[str, Dim]:
        """Dimensions drawn by the searcher (every dimension that is not enumerated)."""
        grid = self.grid_dims()
        return {k: d for k, d in self.search.items() if k not in grid}

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of grid values and arm (``arm`` key), in a stable order."""
        grid = self.grid_dims()
        keys = list(grid)
        return [
            {**dict(zip(keys, values)), "arm": arm}
            for arm in self.arms
            for values in itertools.product(*(grid[k] for k in keys))
        ]

    def num_trials(self) -> int:
        """grid/random: cells x num_samples; optuna: cells x num_samples (x 1 when nothing is sampled)."""
        cells = math.prod(len(v) for v in self.grid_dims().values()) * len(self.arms)
        if self.searcher == "optuna" and not self.sampled_dims():
            return cells
        return cells * self.num_samples


# Ray-facing parts (Ray imported on use) ---------------------------------------------------------------
def domain(dim: Dim) -> Any:
    """The Ray Tune domain of one search dimension (``randint`` is [low, high) like Ray and numpy)."""
    from ray import tune

    v = dim.value
    return {
        "grid": lambda: tune.grid_search(list(v)),
        "choice": lambda: tune.choice(list(v)),
        "uniform": lambda: tune.uniform(v[0], v[1]),
        "loguniform": lambda: tune.loguniform(v[0], v[1]),
        "randint": lambda: tune.randint(v[0], v[1]),
        "quniform": lambda: tune.quniform(v[0], v[1], v[2]),
    }[dim.kind]()


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray's param space for the grid/random searchers: grids crossed, the rest sampled, arms a grid.

    Optuna proposes its points through :class:`CellSearcher`, so its param space is empty.
    """
    from ray import tune

    if space.searcher == "optuna":
        return {}
    out: dict[str, Any] = {k: tune.grid_search(v) for k, v in space.grid_dims().items()}
    out.update({k: domain(d) for k, d in space.sampled_dims().items()})
    out["arm"] = tune.grid_search(list(space.arms)) if space.arms != ("",) else ""
    return out


def build_searcher(space: SearchSpace, metric: str, mode: str, max_concurrent: int | None) -> Any:
    """Ray's search algorithm: the variant generator, or :class:`CellSearcher` for optuna."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if space.searcher == "optuna":
        searcher: Any = __getattr__("CellSearcher")(space, metric, mode)
        return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=max_concurrent or 0)


def _cell_searcher_class() -> type:
    """Define :class:`CellSearcher` on first use (it subclasses Ray's Searcher; importing Ray costs seconds)."""
    from optuna.samplers import TPESampler
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

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

        def set_search_properties(
            self, metric: str | None, mode: str | None, config: dict, **kw: Any
        ) -> bool:
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

    CellSearcher.__module__ = __name__  # pickled as tuneclust.space.CellSearcher, found via __getattr__
    return CellSearcher


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CellSearcher":
        if name not in _LAZY:
            _LAZY[name] = _cell_searcher_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
