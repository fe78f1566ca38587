"""The edge of vfrac: command-line experiments, tuning and tracking."""
