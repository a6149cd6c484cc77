"""The tile loop (`runner`): batching, precision fallback, out-of-memory halving, cancel, progress,
and the merge. May import: plan, compute, errors.

The map of all engine folders is in DESIGN.md."""
