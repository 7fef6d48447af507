"""Side-by-side benchmarks of quantlens's cone sweep against the naive per-layer loop (not tests)."""
