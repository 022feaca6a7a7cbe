"""``python -m services.intake``: run the intake stage."""

from common.bootstrap import run_stage
from services.intake.spec import SPEC

if __name__ == "__main__":
    raise SystemExit(run_stage(SPEC))
