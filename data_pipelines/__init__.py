"""Tools that turn raw data sets on disk into TFDS data sets and their artefacts."""
