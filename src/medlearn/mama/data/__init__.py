"""MaMA data: EMBED/RSNA tables, structured reports, synthetic exams, prepare cache, pairing, splits, dataset, transforms."""
