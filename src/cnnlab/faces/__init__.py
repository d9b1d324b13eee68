"""The face-verification study: train Siamese embeddings, search, analyse, compare, verify and identify."""
