"""Mixed precision: parameters and optimizer state stay float32, the forward pass runs in
``config.model.compute_dtype`` (float32 or bfloat16).

The policy is applied where a denoiser is called (the training step and the sampler): floating
parameters and inputs are cast to the compute dtype, outputs back to float32, and the losses
are computed in float32. Gradients flow through the cast, so they arrive in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
  """``config.model.compute_dtype`` ('float32' when absent) as a dtype; a clear error if unknown."""
  name = model_config.get('compute_dtype', 'float32')
  if name not in DTYPES:
    raise ValueError(f'config.model.compute_dtype: expected one of {sorted(DTYPES)}, found '
                     f'{name!r}.')
  return DTYPES[name]


def cast(tree: Any, dtype: Any) -> Any:
  """Casts the floating leaves of ``tree`` to ``dtype`` (integer leaves, e.g. tokens, stay)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
      tree)


def apply(model, params, *args, dtype: Any = jnp.float32, **kwargs):
  """``model.apply`` under the policy: compute in ``dtype``, results in float32."""
  if dtype == jnp.float32:
    return model.apply({'params': params}, *args, **kwargs)
  out = model.apply({'params': cast(params, dtype)}, *cast(args, dtype), **kwargs)
  return cast(out, jnp.float32)
