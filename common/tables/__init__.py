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


def which_models() -> tuple[str, str]:
    """For messages: ("a VAE or a DiT", "vae|dit")."""
    return " or ".join(f"a {t.name}" for t in TABLES.values()), "|".join(TABLES)


__all__ = [
    "DIT_INFERENCE",
    "DIT_TABLE",
    "INFERENCE",
    "ROPE_DROP_REASON",
    "ROPE_LEAVES",
    "TABLES",
    "VAE_INFERENCE",
    "VAE_TABLE",
    "which_models",
    "InferenceTable",
    "Rule",
    "Table",
]
