"""MaMA networks: image and text towers, projection heads, the model, losses, cross-process gather, export."""
