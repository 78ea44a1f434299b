"""`.ci/floor` pins the JAX stack at the floors setup.cfg declares (read here by `packaging`)."""

import configparser
import pathlib
import subprocess

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _declared_floors() -> dict[str, str]:
  config = configparser.ConfigParser()
  config.read(ROOT / 'setup.cfg')
  floors = {}
  for line in config['options']['install_requires'].splitlines():
    line = line.split('#')[0].strip()
    if line:
      requirement = Requirement(line)
      floors.update({requirement.name: s.version for s in requirement.specifier
                     if s.operator == '>='})
  return floors


def test_floor_script_pins_the_declared_floors_of_the_jax_stack():
  pins = subprocess.run(['bash', str(ROOT / '.ci' / 'floor'), '--pins'], check=True,
                        capture_output=True, text=True).stdout.split()
  floors = _declared_floors()
  expected = {name: floors[name] for name in ('jax', 'flax', 'optax', 'orbax-checkpoint')}
  expected['jaxlib'] = floors['jax']
  assert dict(pin.split('==') for pin in pins) == expected
