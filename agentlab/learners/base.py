"""What learners share."""

from __future__ import annotations

from typing import Any


class StatelessLearner:
    """A learner that keeps nothing between tasks: empty checkpoint state, nothing in the memory ledger.

    Learners with state across tasks (replay buffers) override all four methods.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def state_bytes(self) -> int:
        return 0

    def forget_task(self, task_id: int) -> int:
        """Nothing of any task is kept here: nothing to free."""
        return 0
