"""Model lifecycle: the registry of model and store versions, the promotion gate, the live switch and rollback."""
