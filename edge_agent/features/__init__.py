"""Feature vectors per communication channel and window: the contract with the model."""
