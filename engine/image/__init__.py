"""An upscale end to end (`pipeline`: passes, alpha, target size), with `resize`, `colour`, image
files (`images`) and what a run needs for hosts (`memory`). May import: run, plan, compute,
storage, errors.

The map of all engine folders is in DESIGN.md."""
