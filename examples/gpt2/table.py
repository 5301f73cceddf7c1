"""The name/layout table of the GPT-2 port: `dfc convert --table examples/gpt2/table.py:TABLE`.

Flax (Linen) leaf -> GPT2Model state-dict key, first matching rule wins:

    wte.embedding, wpe.embedding          -> wte.weight, wpe.weight      as is
    h.N.ln_1.scale, h.N.ln_2.scale, ln_f  -> ...weight                   as is
    h.N.attn.c_attn.kernel (3E, E), ...   -> ...weight (E, 3E)            transposed
    *.bias                                -> *.bias                      as is

The kernels are transposed, but not for the usual reason. A Flax Dense kernel is (in, out) and a torch
Linear weight (out, in); here both sides differ from that: transformers' FlaxConv1D stores (out, in) and
its torch Conv1D stores (in, out). The layout change is a transpose either way, so LINEAR is the kind.
GPT2Model has no `lm_head` (GPT2LMHeadModel ties it to `wte`), so no Flax leaf is left over.
"""

from common.kinds import Kind
from common.tables import Rule, Table

TABLE = Table(
    "gpt2",
    rules=(
        Rule("*.embedding", Kind.EMBEDDING),
        Rule("*ln_*.scale", Kind.NORM_SCALE),
        Rule("*.kernel", Kind.LINEAR),
        Rule("*.bias", Kind.BIAS),
    ),
    rope_caches=lambda config: {},
)
