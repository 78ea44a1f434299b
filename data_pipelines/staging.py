"""All-or-nothing data set builds: write into a staging folder, move into place when complete."""

from __future__ import annotations

import pathlib
import shutil
import uuid
from typing import Callable

import tensorflow_datasets as tfds


def build_staged(make_builder: Callable[[str], tfds.core.DatasetBuilder],
                 manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
                 finalize: Callable[[tfds.core.DatasetBuilder, pathlib.Path], None] | None = None,
                 ) -> pathlib.Path:
  """Builds ``make_builder(staging_data_dir)`` from ``manual_dir``; returns the final folder.

  The records and whatever ``finalize(builder, staged_version_dir)`` writes beside them (build
  report, statistics, tokenizer) go to a staging folder inside ``data_dir``, which becomes the
  data set's version folder only once all of it succeeded. On any failure the staging folder is
  removed, so no half-written data set is ever left where training would find it.
  """
  data_dir = pathlib.Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  staging = data_dir / f'.incomplete-{uuid.uuid4().hex[:8]}'
  try:
    builder = make_builder(str(staging))
    target = data_dir / pathlib.Path(builder.data_dir).relative_to(staging)
    if target.exists():
      raise FileExistsError(f'{target} already exists; delete it to build the data set again.')
    tfds.disable_progress_bar()  # Its carriage-return bars garble logs; callers print results.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    staged = pathlib.Path(builder.data_dir)
    if finalize is not None:
      finalize(builder, staged)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target
