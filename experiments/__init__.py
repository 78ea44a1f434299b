"""One config file per experiment (ml_collections ConfigDicts)."""
