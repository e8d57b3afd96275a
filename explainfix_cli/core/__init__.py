"""The basics every stage shares: the error family, model helpers (spatial convs, calling, MACs), the gradient loop, formatting."""
