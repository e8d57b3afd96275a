"""The channel-dependency engine: tracing, label maps, op handlers and tables, the removal plan."""
