"""Many videos: `dfc compress` and `dfc evaluate` over a folder, a glob or a manifest, resumable, on one or
many workers.

- `inputs.py`: which videos a folder, glob or manifest names, and the output name of each;
- `ledger.py`: the JSONL ledger in the output folder, the one record of what is finished;
- `jobs.py`: what one video means for each command (compress, evaluate) and the final tables;
- `engine.py`: the coordinator (ledger owner, progress, leases) and the work loop, in one process,
  on `--workers N` local processes, or across machines under `torchrun`;
- `worker.py`: the entry point of a local worker process.
"""
