"""``python -m services.router``: run the router stage."""

from common.bootstrap import run_stage
from services.router.spec import SPEC

if __name__ == "__main__":
    raise SystemExit(run_stage(SPEC))
