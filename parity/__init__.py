"""Layer-by-layer parity of a PyTorch port against its Flax reference (fp32 and bf16, carried and isolated).

The cores know no model. Pieces, one job each: `suite` says what a run is made of (subjects, cases,
suites found by `MODULE:NAME`); `capture_jax` (Flax NNX and Linen) / `capture_torch` record every
submodule call by its parameter-tree path; `jax_models` and `transfer` move one set of weights into every
model, to torch through the subject's conversion table; `runner` runs the reference, JAX bf16 and PyTorch
side by side; `tolerance` and `metrics` judge each layer; `report` and `figures` write what was found;
`mistakes` plants real porting bugs so tests can prove the suite catches them; `environment` records and
pins what decides numerics. This repository's VAE and DiT are the plug-in `parity.suites.vae_dit`.
Across processes: `trace` writes and reads one side's captures on disk, `trace_run` runs one side (or both,
one after the other) into traces, and `compare` judges traces made elsewhere into the same report.
"""
