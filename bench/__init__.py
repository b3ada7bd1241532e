"""Benchmarks that print their figures. Run all with ``make bench`` or one with ``python -m bench.NAME``."""

import os

# Set before any benchmark imports LiteLLM, which otherwise fetches its price map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
