"""One process of a multi-process training run, for tests/test_training_at_scale.py.

    python tests/multihost_worker.py --coordinator_address=127.0.0.1:PORT --num_processes=2 \
        --process_id=I --workdir=DIR --num_steps=N

Each process sees 2 CPU devices (set here, before JAX starts) and runs the tiny config through
``trainer.train_and_evaluate`` after ``jax.distributed`` joins the processes: the same code as
``python -m finedual_jax.train --coordinator_address=...``.
"""

import argparse
import os


def tiny_config(num_steps: int):
  """The tiny config on every device (the test's one-process reference differs only there)."""
  from experiments import default
  config = default.get_config('size=tiny')
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.checkpoint_every = num_steps
  config.sample.text = ''
  return config


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--coordinator_address', required=True)
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_steps', type=int, default=2)
  args = parser.parse_args()
  # Before JAX starts (it is imported below, not at the top: the test imports tiny_config).
  os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=2 '
                             '--xla_cpu_collective_call_terminate_timeout_seconds=120')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  from finedual_jax import parallel
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  from finedual_jax import trainer
  summary = trainer.train_and_evaluate(tiny_config(args.num_steps), args.workdir)
  print(f'process {args.process_id} done at step {summary["step"]}', flush=True)


if __name__ == '__main__':
  main()
