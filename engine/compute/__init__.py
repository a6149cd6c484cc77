"""Where and how a forward runs: the host's device answers (`devices`), precision and model copies
(`precision`, `inference_forms`), host-device copies (`transfer`). May import: errors, archs.

The map of all engine folders is in DESIGN.md."""
