"""``python -m services.risk_gate``: run the risk gate stage and, beside it, the reference price feed."""

from common.bootstrap import run_stage
from services.risk_gate.spec import stage_spec

if __name__ == "__main__":
    raise SystemExit(run_stage(stage_spec))
