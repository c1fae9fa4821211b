"""MaMA evaluation: zero-shot, linear probe, fine-tune, metrics, retrieval, localisation, predict, figures."""
