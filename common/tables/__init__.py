"""The registry of model tables: the one place that names the models ("vae", "dit").

`TABLES[model_type]` is the model's name/layout table (`common.tables.base.Table`) and
`INFERENCE[model_type]` the configuration facts its shapes carry. The converter's engine (`convert/`) and
the config inference (`common.infer`) know a model only through these. A new model adds a module here
with its two tables and one line to each registry. Framework-free.
"""

from common.tables.base import ROPE_DROP_REASON, ROPE_LEAVES, InferenceTable, Rule, Table
from common.tables.dit import DIT_INFERENCE, DIT_TABLE
from common.tables.vae import VAE_INFERENCE, VAE_TABLE

TABLES: dict[str, Table] = {"vae": VAE_TABLE, "dit": DIT_TABLE}
INFERENCE: dict[str, InferenceTable] = {"vae": VAE_INFERENCE, "dit": DIT_INFERENCE}
# The registered names of `--table`: short for a MODULE:NAME, resolved like a user's table.
REGISTERED: dict[str, str] = {"vae": "common.tables.vae:VAE_TABLE", "dit": "common.tables.dit:DIT_TABLE"}


def load_table(spec: str) -> Table:
    """The `Table` that `spec` names: `MODULE:NAME`, `path/to/file.py:NAME`, or a registered name
    (`vae`, `dit`). Errors are `common.plugins.PluginError`, one line each."""
    from common.plugins import load_plugin

    return load_plugin(spec, "table", REGISTERED, Table)


def registered_name(table: Table) -> str | None:
    """The registered model a table is (its configuration can be inferred and checked), or None."""
    return next((name for name, known in TABLES.items() if known is table), None)


def which_models() -> tuple[str, str]:
    """For messages: ("a VAE or a DiT", "vae|dit")."""
    return " or ".join(f"a {t.name}" for t in TABLES.values()), "|".join(TABLES)


__all__ = [
    "DIT_INFERENCE",
    "DIT_TABLE",
    "INFERENCE",
    "REGISTERED",
    "ROPE_DROP_REASON",
    "ROPE_LEAVES",
    "TABLES",
    "VAE_INFERENCE",
    "VAE_TABLE",
    "load_table",
    "registered_name",
    "which_models",
    "InferenceTable",
    "Rule",
    "Table",
]
