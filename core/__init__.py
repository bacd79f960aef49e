"""What every stage shares: configs, artifacts, chat formatting, the verifier, the tiny offline model.

Importing this package makes the process offline by default: no code path of this project may fetch
weights or data from a hub at run time. Set HF_HUB_OFFLINE=0 yourself to opt back in.
"""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
