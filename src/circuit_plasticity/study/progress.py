"""A progress bar over a job's stages with the time left (tqdm's estimate from the stages done),
the current stage beside it, and each stage's message kept as a line above the bar."""

from __future__ import annotations

from collections.abc import Callable


class StageBar:
    """Call it with a message when a stage starts; `done_through(n)` after a group of stages
    (a seed) jumps over the stages it found already on disk."""

    def __init__(self, total: int, desc: str, say: Callable[[str], None] | None = print):
        from tqdm import tqdm

        self.say = say
        self.bar = tqdm(total=total, desc=desc, unit="stage", disable=say is None, dynamic_ncols=True)
        self.started = False

    def __call__(self, message: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(message, refresh=False)
        if self.say is not None:
            with self.bar.external_write_mode():
                self.say(message)
        self.bar.refresh()

    def done_through(self, n: int) -> None:
        self.started = False
        self.bar.update(max(0, n - self.bar.n))

    def close(self) -> None:
        self.bar.close()
