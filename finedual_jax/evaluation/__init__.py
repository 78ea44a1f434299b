"""The InterHuman evaluation protocol: evaluator model, metrics, evaluation runner, weight converter."""
