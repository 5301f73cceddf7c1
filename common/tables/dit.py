"""The VideoDiT's name/layout table and the configuration facts its tensor shapes carry."""

from __future__ import annotations

from common.config import DiTConfig
from common.tables.base import (
    ATTENTION_FACTS,
    ATTENTION_RULES,
    GENERIC_RULES,
    HEADS,
    Axis,
    Count,
    InferenceTable,
    Table,
    factored_ropes,
)


def _ropes(cfg: DiTConfig) -> dict[str, tuple[int, int]]:
    return factored_ropes("", cfg.depth, cfg.max_temporal_len, cfg.hw, cfg.head_dim)


DIT_TABLE = Table(model_type="dit", rules=(*ATTENTION_RULES, *GENERIC_RULES), rope_caches=_ropes, label="DiT")

DIT_INFERENCE = InferenceTable(
    model_type="dit",
    config_class=DiTConfig,
    marker="up_proj.kernel",
    facts=(
        Count("depth", "layers"),
        Axis("residual_dim", "up_proj.kernel", 1),
        Axis("compressed_channel_dim", "up_proj.kernel", 0),
        Axis("hw", "spacing_pred2.kernel", 0),
        Axis("hw", "*SpatialAttention.ROPE.cos_cached", 1, required=False),
        *ATTENTION_FACTS,
    ),
    derived=(HEADS,),
)
