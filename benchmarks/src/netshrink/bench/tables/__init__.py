"""Results tables: specs (rows as data), the runner with caching, report and regression check."""

from netshrink.bench.tables import auto as _auto  # noqa: F401  (registers the table)
from netshrink.bench.tables import bits as _bits  # noqa: F401
from netshrink.bench.tables import deep as _deep  # noqa: F401
from netshrink.bench.tables import deploy as _deploy  # noqa: F401
from netshrink.bench.tables import distill as _distill  # noqa: F401
from netshrink.bench.tables import micronet as _micronet  # noqa: F401
from netshrink.bench.tables import prune as _prune  # noqa: F401
from netshrink.bench.tables import smoke as _smoke  # noqa: F401
from netshrink.bench.tables.profiles import PROFILE_SETTINGS, Profile
from netshrink.bench.tables.spec import (
    NO_TRAINING,
    PROFILES,
    TABLES,
    Row,
    Schedule,
    Table,
    list_tables,
    register_table,
)

__all__ = ["NO_TRAINING", "PROFILES", "PROFILE_SETTINGS", "TABLES", "Profile", "Row",
           "Schedule", "Table", "list_tables", "register_table"]
