"""``python -m services.execution_handler``: run the execution handler stage."""

from common.bootstrap import run_stage
from services.execution_handler.spec import SPEC

if __name__ == "__main__":
    raise SystemExit(run_stage(SPEC))
