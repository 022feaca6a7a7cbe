"""``python -m services.jobs run|send <job>``: run a job now in this process, or enqueue it for the jobs worker.

    python -m services.jobs run reconcile_stuck_orders     # here and now, the summary printed
    python -m services.jobs send expire_day_orders         # onto the oms.jobs queue (the worker runs it)
    python -m services.jobs runs                           # the latest job runs

For operators (the runbook); the scheduler normally enqueues them.
"""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import select

from common import bootstrap
from common.runtime.process import configure_process, settings_or_exit
from common.store.tables import job_runs

JOBS = ("expire_day_orders", "refresh_statistics", "purge_retention", "reconcile_stuck_orders")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m services.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "send", "runs"])
    parser.add_argument("job", nargs="?", choices=JOBS)
    parser.add_argument("--limit", type=int, default=20, help="runs: how many")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = settings_or_exit()
    configure_process("oms.jobs", settings)
    from services.jobs import actors  # binds the broker: only once the arguments are known good

    actors.wire(settings, bootstrap.engine(settings))

    if args.action == "runs":
        _, engine = actors.wiring()
        query = select(job_runs).order_by(job_runs.c.id.desc()).limit(args.limit)
        with engine.connect() as connection:
            for row in connection.execute(query).mappings():
                print(json.dumps(dict(row), default=str))
        return 0
    if args.job is None:
        parser.error("which job?")
    actor = actors.PERIODIC_ACTORS[args.job]
    if args.action == "send":
        message = actor.send()
        print(f"enqueued {args.job} as {message.message_id}")
    else:
        actor.fn()  # the actor's function, in this process; the run is recorded in job_runs
        print(f"{args.job} done; see `python -m services.jobs runs`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
