"""The tiles of a run: windows (`tiling`), the context margin (`receptive`), the window size from
memory and CPU cost (`autotile`), probes kept on disk (`probe_store`). May import: compute, storage, errors.

The map of all engine folders is in DESIGN.md."""
