"""transformers' FlaxGPT2Model (Flax Linen) ported to its GPT2Model (PyTorch) with this toolkit alone.

The walk is docs/PORTING.md: `model.py` builds the pair and saves the Flax weights as an Orbax checkpoint,
`table.py` is the name/layout table `dfc convert --table` and `dfc inspect --table` take, `suite.py` the
parity suite `dfc parity --suite` takes, `equivalence.py` measures what transformers' own check sees
beside what ours adds. Needs the `example` extra (`pip install -e '.[example]'`).
"""
