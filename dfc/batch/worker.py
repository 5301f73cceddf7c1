"""A local worker process of `dfc compress/evaluate --workers N`: `python -m dfc.batch.worker HOST:PORT I N`.

It reads the job (command and options) from the coordinator's store and takes videos until the job is
closed. Its failures reach the user through the coordinator, so it prints only what explains a fatal stop.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import timedelta


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import TCPStore

    from dfc.batch.engine import work_from_store, worker_device
    from dfc.errors import UserError

    address, index, count = argv if argv is not None else sys.argv[1:]
    host, port = address.rsplit(":", 1)
    try:
        store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=120))
        spec = json.loads(store.get("job"))
        args = argparse.Namespace(**spec["args"])
        job = importlib.import_module(f"dfc.commands.{spec['command']}").JOB
        threads = max(1, (__import__("os").cpu_count() or 1) // int(count))
        work_from_store(store, job, args, worker_device(args.device, int(index)), threads)
    except KeyboardInterrupt:
        return 130
    except UserError:
        return 2  # already reported to the coordinator, which prints it once
    except (RuntimeError, ConnectionError) as err:  # the coordinator went away (interrupted, killed)
        print(
            f"dfc worker {index}: stopped: {str(err).splitlines()[0] if str(err) else err!r}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
