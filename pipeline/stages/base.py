"""A stage, declared once: what it reads (config sections, files of earlier stages, data, the model
source), and how it runs. The runner does what every stage must: verify what it reads and drop its
old record before it starts (``records.begin``), and write its record before its outputs take their
names (``StageRun.writing``). Records and ``trtpipe engines`` read the same declaration, so a stage
cannot read an input its record leaves out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.results import Result


def _nothing(cfg: Config, out: Layout) -> list:
    return []


def _no_data(cfg: Config) -> list:
    return []


def user_metric(cfg: Config) -> list[tuple[str, str]]:
    """The file of a user's ``[evaluation] metric`` callable, as a stage declares the data it reads:
    its figures decide the gates, so an edited metric re-runs the stages it judges."""
    metric = cfg.evaluation.metric if cfg.evaluation is not None else ""
    return [("metric", metric)] if ":" in metric else []


def _ready(cfg: Config, out: Layout, **options: Any) -> None:
    return None


@dataclass(frozen=True, eq=False)
class Stage:
    """One recorded stage. ``reads`` gives (the stage that writes it, file) for each file it reads
    from an earlier stage; ``data`` gives (what, config source) for each data source; ``source``:
    it reads the model itself (its source files and weights); ``remakes``: earlier stages whose
    files it makes itself when they are missing or stale (recorded as its inputs, not verified
    before it runs). ``check(cfg, out, **options)`` raises where the stage cannot run here (a
    capability, a missing input): before anything is removed, so a refused command changes nothing.
    ``result``: the type of what it measured (``pipeline.results``), a file of another format is
    stale. ``run(StageRun, **options)`` does the work."""

    name: str
    config: tuple[str, ...]  # the config sections it reads (``bench``), or single keys of one (``bench.threads``)
    run: Callable[..., Any]
    reads: Callable[[Config, Layout], list[tuple[Stage, Path]]] = _nothing
    data: Callable[[Config], list[tuple[str, str]]] = _no_data
    source: bool = False
    remakes: frozenset[str] = field(default_factory=frozenset)
    check: Callable[..., None] = _ready
    result: type[Result] | None = None

    @property
    def module(self) -> str:
        """The module whose code (and what it imports) is this stage's code version."""
        return f"pipeline.stages.{self.name}"

    def __call__(self, cfg: Config, root: Path | str | None = None, **options: Any) -> Any:
        from pipeline import records

        out = Layout.of(cfg, root)
        from pipeline.fileio import expecting

        out.check_folders()
        self.check(cfg, out, **options)
        read = records.begin(cfg, out, self)
        with expecting(records.whole_files(cfg, self), f"trtpipe {self.name}"):
            return self.run(StageRun(self, cfg, out, read), **options)

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"


@dataclass
class Written:
    """The files a stage's ``writing`` block made, and whether its gate passed."""

    paths: list[Path] = field(default_factory=list)
    passed: bool = True


@dataclass(frozen=True)
class StageRun:
    stage: Stage
    cfg: Config
    out: Layout
    read: dict[str, str]  # what the stage reads, by sha256, as it started: what its record names

    @contextlib.contextmanager
    def writing(self) -> Iterator[Written]:
        """Files finished in the block wait beside their names; on a clean exit the stage's record is
        written naming them, then they take their names (``fileio.after_record``)."""
        from pipeline import records
        from pipeline.fileio import after_record

        with after_record():
            written = Written()
            yield written
            records.finish(self.cfg, self.out, self.stage, written.paths, written.passed, self.read)
