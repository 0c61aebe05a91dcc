"""The offline world: a procedural shapes dataset, a small CLIP trained on it, and the demo."""
