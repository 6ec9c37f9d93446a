"""Exceptions the command line's entry point handles itself (kept free of heavy imports for ``pipelines.cli``)."""

from __future__ import annotations


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C reached the driver while the studies ran; the sweep continues with :attr:`resume_command`.

    The study threads cannot be joined, so whoever catches this must end the process without waiting
    for them (``pipelines.cli`` exits with status 130); Ray ends the job's trials with the driver.
    """

    def __init__(self, spec_name: str, sweep_id: str) -> None:
        self.spec_name = spec_name
        self.sweep_id = sweep_id
        super().__init__(f"interrupted: continue with  {self.resume_command}")

    @property
    def resume_command(self) -> str:
        return f"memseg sweep --config {self.spec_name} --resume --sweep-id {self.sweep_id}"
