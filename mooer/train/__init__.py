"""Training, synthetic speech, evaluation and pseudo-labelling."""
