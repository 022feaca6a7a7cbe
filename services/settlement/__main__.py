"""``python -m services.settlement``: run the settlement stage, with the configured settlement calendar."""

from common.bootstrap import run_stage
from services.settlement.spec import stage_spec

if __name__ == "__main__":
    raise SystemExit(run_stage(stage_spec))
