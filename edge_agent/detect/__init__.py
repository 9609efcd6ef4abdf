"""Detection: deterministic OT rules and the site baseline, beside the model's scores."""
