"""The search space of a sweep: grid and sampled dimensions, grid cells, Ray Tune domains, the cell searcher.

One module for everything a sweep needs to know about its search space. :class:`SearchSpace` is pure Python
(the spec layer validates with it without importing Ray); :func:`domain`, :func:`param_space`,
 import Ray when called; Ray's searchers are built in :mod:`tuneclust.searchers`.

Searchers: ``grid`` and ``random`` use Ray's variant generator (grid dimensions crossed, random ones sampled,
seeded); ``optuna`` runs a seeded TPE study inside every *cell* of the grid (grid values x ablation arms), so a
grid mixed with Optuna is exhaustive over the grid and adaptive over the rest.
"""

from __future__ import annotations

import itertools
import math
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

    Optuna proposes its points through :class:`tuneclust.searchers.CellSearcher`, so its param space is empty.
    """
    from ray import tune

    if space.searcher == "optuna":
        return {}
    out: dict[str, Any] = {k: tune.grid_search(v) for k, v in space.grid_dims().items()}
    out.update({k: domain(d) for k, d in space.sampled_dims().items()})
    out["arm"] = tune.grid_search(list(space.arms)) if space.arms != ("",) else ""
    return out
