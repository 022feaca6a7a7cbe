"""``python -m services.settlement``: run the settlement stage."""

from common.bootstrap import run_stage
from services.settlement.worker import SPEC

if __name__ == "__main__":
    run_stage(SPEC)
