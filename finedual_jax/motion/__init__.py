"""Skeleton, rotations, 262-d motion features and rendering."""
