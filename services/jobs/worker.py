"""``python -m services.jobs.worker``: the dramatiq worker of the background jobs (queue ``oms.jobs``).

Runs dramatiq's own CLI: one worker process with two threads (the jobs are few and mostly wait on Postgres);
``-p``/``-t`` and the other dramatiq options may be given after the command to override. On SIGTERM the
worker finishes the jobs at hand (up to 30 s) and exits; a job cut short is redelivered and run again.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main as dramatiq_main
from dramatiq.cli import make_argument_parser

from common.runtime.process import configure_process, settings_or_exit
from services.jobs.config import JOBS_QUEUE

DEFAULTS = [
    "--processes",
    "1",
    "--threads",
    "2",
    "--queues",
    JOBS_QUEUE,
    "--skip-logging",  # JSON logs are set up by services.jobs.middleware in the worker process
    "--worker-shutdown-timeout",
    "30000",
]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    # Checked here, before dramatiq starts its worker processes (each builds its own: services.jobs.actors).
    configure_process("oms.jobs_worker", settings_or_exit())
    extra = sys.argv[1:] if argv is None else argv
    args = make_argument_parser().parse_args(["services.jobs.actors", *DEFAULTS, *extra])
    code: int = dramatiq_main(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
