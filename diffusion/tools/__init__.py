"""Tools built on the library, not part of it: `inspection` (trajectories, attention maps, schedule plots),
`workbench` (train or load a model from a notebook), `demo` (`make demo`)."""
