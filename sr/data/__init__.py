"""Training/validation data: HR and paired datasets, batched degradation pipelines, the Lightning data module."""
