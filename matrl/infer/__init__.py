"""`matrl infer`: a procedural material for a photo (retrieval, sampling, ranking, refinement, export)."""
