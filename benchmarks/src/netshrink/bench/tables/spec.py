"""Results tables as data: a row is a model + a recipe of stages + a training schedule.

Stages are given by their core record (``{"kind": ..., "config": {...}}``), so a table names
quant, prune and bnfuse steps without importing those packages; the runner turns each record
into a Stage with ``netshrink.core.stage_from_description``. A row may start from another row's
final model (``upstream``): sparse training -> prune -> fine-tune -> quantize is a chain of rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from netshrink.core import Registry, check_choice, check_float, check_int

PROFILES = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Schedule:
    """Training schedule per profile. ``epochs[profile] == 0`` means: no training."""

    epochs: dict[str, int]
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    recalibrate_bn: int = 0  # batches to re-estimate BN statistics over after training

    def __post_init__(self) -> None:
        for profile in PROFILES:
            if profile not in self.epochs:
                raise ValueError(f"epochs has no entry for profile {profile!r}; "
                                 f"give one for each of {PROFILES}")
            check_int(f"epochs[{profile!r}]", self.epochs[profile], min_value=0)
        check_float("lr", self.lr, min_value=0.0, min_exclusive=True)
        check_int("batch_size", self.batch_size, min_value=1)


NO_TRAINING = Schedule(epochs={p: 0 for p in PROFILES})


@dataclass(frozen=True)
class Row:
    """One results-table row."""

    name: str
    label: str  # what the README shows
    model: str = "nin"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stages: tuple[dict[str, Any], ...] = ()
    schedule: Schedule = NO_TRAINING
    upstream: str | None = None
    latency: bool = False
    cell: tuple[str, str] | None = None  # (row, column) of the table's grid, if it has one
    # an earlier row whose final model is the teacher of this row's stages that take one
    # (``set_teacher``: distill.kd); the teacher's spec is part of this row's hash
    teacher: str | None = None
    seed: int = 0  # added to the run's seed: the same recipe on another seed is another row

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        check_int("seed", self.seed, min_value=0)
        if self.teacher is not None and self.teacher == self.name:
            raise ValueError(f"row {self.name!r} cannot be its own teacher")
        if self.cell is not None:
            object.__setattr__(self, "cell", tuple(str(c) for c in self.cell))
            if len(self.cell) != 2:
                raise ValueError(f"row {self.name!r}: cell={self.cell!r} must be (row, column)")
        for stage in self.stages:
            if not isinstance(stage, dict) or "kind" not in stage:
                raise ValueError(f"row {self.name!r}: stage {stage!r} must be a dict with 'kind'")
        if self.upstream is None and not self.model:
            raise ValueError(f"row {self.name!r} needs a model or an upstream row")

    def record(self, profile: str) -> dict[str, Any]:
        """What decides this row's result under ``profile`` (hashed for the cache)."""
        check_choice("profile", profile, PROFILES)
        d = dataclasses.asdict(self)
        d["schedule"] = {**dataclasses.asdict(self.schedule),
                         "epochs": self.schedule.epochs[profile]}
        d.pop("label")
        d.pop("cell")  # presentation only
        for key, unused in (("teacher", None), ("seed", 0)):  # left out when unused, so the
            if d[key] == unused:                               # older rows' hashes stay
                d.pop(key)
        return d


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: tuple[Row, ...]
    baseline: str  # the float row that accuracy loss and compression compare against
    dataset: str = "cifar10"
    ci_only: bool = False  # not part of --table all (the smoke table)
    # Published (a README block) but not part of --table all, the main job: a table whose quick
    # profile alone takes longer than CI's time budget allows; reproduced by its own command,
    # ``bench reproduce --table NAME --profile quick``.
    extra: bool = False
    grid: tuple[str, str] | None = None  # axis names when rows form a grid (``Row.cell``)
    before_training: bool = False  # report the accuracy right after the stages, too
    plot_x: str = "size"  # the plot's x axis: packed "size" or "latency" (batch 64)
    # rows also exported to ONNX and measured in ONNX Runtime / OpenVINO (tables/deploy.py)
    deploy_rows: tuple[str, ...] = ()
    # a table of several models (auto): each row's loss and compression compare against the
    # first row of its upstream chain (that model's float row), not the one table baseline
    baseline_per_chain: bool = False

    def __post_init__(self) -> None:
        check_choice("plot_x", self.plot_x, ("size", "latency"))
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r} has duplicate row names")
        if self.baseline not in names:
            raise ValueError(f"table {self.name!r}: baseline {self.baseline!r} is not a row")
        unknown = [n for n in self.deploy_rows if n not in names]
        if unknown:
            raise ValueError(f"table {self.name!r}: deploy_rows {unknown!r} are not rows")
        cells = [r.cell for r in self.rows if r.cell is not None]
        if len(set(cells)) != len(cells):
            raise ValueError(f"table {self.name!r} has two rows in the same grid cell")
        if cells and self.grid is None:
            raise ValueError(f"table {self.name!r}: rows have grid cells but the table names "
                             "no grid axes (grid=(row axis, column axis))")
        for i, row in enumerate(self.rows):
            if row.upstream is not None and row.upstream not in names[:i]:
                raise ValueError(f"table {self.name!r}: row {row.name!r} has upstream "
                                 f"{row.upstream!r}, which must be an earlier row")
            if row.teacher is not None and row.teacher not in names[:i]:
                raise ValueError(f"table {self.name!r}: row {row.name!r} has teacher "
                                 f"{row.teacher!r}, which must be an earlier row")

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise ValueError(f"table {self.name!r} has no row {name!r}; rows: "
                         f"{', '.join(r.name for r in self.rows)}")

    def chain_root(self, name: str) -> str:
        """The first row of ``name``'s upstream chain (the row itself when it has none)."""
        by_name = {r.name: r for r in self.rows}
        while by_name[name].upstream is not None:
            name = by_name[name].upstream
        return name

    def baseline_of(self, name: str) -> str:
        """The float row ``name``'s accuracy loss and compression compare against."""
        return self.chain_root(name) if self.baseline_per_chain else self.baseline

    def closure(self, names: list[str]) -> list[Row]:
        """The named rows and every row they depend on (upstream, teacher), in table order."""
        wanted: set[str] = set()
        todo = list(names)
        while todo:
            row = self.row(todo.pop())
            if row.name not in wanted:
                wanted.add(row.name)
                todo += [n for n in (row.upstream, row.teacher) if n is not None]
        return [r for r in self.rows if r.name in wanted]


TABLES: Registry[Table] = Registry("table")


def register_table(table: Table) -> Table:
    return TABLES.register(table.name)(table)


def list_tables() -> list[str]:
    return TABLES.names()
