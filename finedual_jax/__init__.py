"""FineDual in JAX/Flax: text-driven two-person motion generation."""
