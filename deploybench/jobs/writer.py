"""The one writer of a run folder's results.json.

A job (run, bench, load-capacity, the CLI's load and edge) opens one RunWriter per run folder
and hands `writer.add` to the stages as their sink; the stages never open results.json. Every
change is saved at once, atomically, so a run killed midway keeps what it measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from deploybench.errors import UsageError
from deploybench.files import atomic_write_json
from deploybench.records import Record, ResultsFile, record_dict
from deploybench.results import RESULTS_FILE, environment, read_results


class RunWriter:
    """RUN_DIR/results.json: created, or opened and validated (a run folder may hold several
    stages' records, e.g. `deploybench load` then `deploybench edge` into the same folder)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS_FILE
        self.results = read_results(self.path) if self.path.is_file() else ResultsFile.new()
        try:
            self.save()
        except OSError as error:
            raise UsageError(f"cannot write to run folder {self.run_dir}: "
                             f"{error.strerror or error}") from error

    @property
    def measurements(self) -> list[Record]:
        return self.results.measurements

    @property
    def environment(self) -> dict[str, Any]:
        return self.results.environment

    @property
    def partial(self) -> bool:
        return self.results.partial

    def rows(self) -> list[dict[str, Any]]:
        """Every record as a plain dict, as results.json holds it."""
        return [record_dict(record) for record in self.results.measurements]

    def add(self, *records: Record) -> None:
        """Append records and save: the sink the stages are given."""
        for record in records:
            if not isinstance(record, BaseModel):  # a plain dict would skip validation
                raise TypeError(f"not a typed record: {record!r:.80}")
        self.results.measurements.extend(records)
        self.save()

    def note(self, text: str) -> None:
        self.results.notes.append(text)
        self.save()

    def set_partial(self, partial: bool) -> None:
        self.results.partial = partial
        self.save()

    def set_environment(self, **extra: Any) -> None:
        """Record where this was measured, keeping what earlier stages of the run recorded."""
        self.results.environment = {**self.results.environment, **environment(**extra)}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.results.dump())
