"""``python -m services.intake``: run the intake stage."""

from common.bootstrap import run_stage
from services.intake.worker import SPEC

if __name__ == "__main__":
    run_stage(SPEC)
