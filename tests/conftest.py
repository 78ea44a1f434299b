"""Test setup: 8 fake CPU devices for the sharding tests (must happen before JAX is imported)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_cpu_collective_call_terminate_timeout_seconds=60')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
