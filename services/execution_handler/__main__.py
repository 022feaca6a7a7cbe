"""``python -m services.execution_handler``: run the execution handler stage."""

from common.bootstrap import run_stage
from services.execution_handler.worker import SPEC

if __name__ == "__main__":
    run_stage(SPEC)
