"""Population-based training within each ablation arm.

Ray's PBT lets a weak trial copy a strong one's checkpoint *and its whole config*, so with an ablation the arm
(its loss weights) is copied too: after a few exploits every trial runs the leading arm and the ablation is gone
(seen on the DEC example: four trials of two arms all ended as IDEC). :class:`ArmPBT` ranks and exploits each
trial only against the trials of its own arm, so arms keep their loss weights and PBT tunes the searched keys
inside each. Without an ablation it is Ray's PBT unchanged.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining


class ArmPBT(PopulationBasedTraining):
    """Ray's asynchronous PBT whose quantiles are taken among the trials of the reporting trial's ``arm``."""

    _arm: Any = None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._arm = trial.config.get("arm")
        try:
            return super().on_trial_result(tune_controller, trial, result)
        finally:
            self._arm = None

    def _quantiles(self) -> tuple[list, list]:
        if self._arm is None:
            return super()._quantiles()
        everyone = self._trial_state
        self._trial_state = {t: s for t, s in everyone.items() if t.config.get("arm") == self._arm}
        try:
            return super()._quantiles()
        finally:
            self._trial_state = everyone
