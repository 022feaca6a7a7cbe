"""``python -m services.router``: run the router stage."""

from common.bootstrap import run_stage
from services.router.worker import SPEC

if __name__ == "__main__":
    run_stage(SPEC)
