"""Window summaries."""
