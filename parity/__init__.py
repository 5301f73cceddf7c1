"""Layer-by-layer parity of `torch_impl` against `jax_ref` (fp32 and bf16, carried and isolated).

Pieces, one job each: `capture_jax` / `capture_torch` record every submodule call by its parameter-tree
path; `transfer` moves one set of weights into every model through `convert.tables`; `cases` says what is
run on which inputs; `runner` runs the reference, JAX bf16 and PyTorch side by side; `tolerance` and
`metrics` judge each layer; `report` and `figures` write what was found; `mistakes` plants real porting
bugs so tests can prove the suite catches them. `environment` records and pins what decides numerics.
Across processes: `trace` writes and reads one side's captures on disk, `trace_run` runs one side (or both,
one after the other) into traces, and `compare` judges traces made elsewhere into the same report.
"""
