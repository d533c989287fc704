"""Fair-lending figures of a model from the institutions' summed counts (institution.fairness)."""
