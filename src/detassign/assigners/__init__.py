"""One assigner per module; build them from config with :func:`detassign.build_assigner`."""
