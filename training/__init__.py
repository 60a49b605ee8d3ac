"""Training: the dataset layout, datasets, trainers (BTU-Net, its unidirectional baseline,
person-specific and unconditional variants, SR3) and distributed launch.

* :mod:`training.dataset_format`: the on-disk dataset layout (``manifest.json`` +
  ``sequences/<id>/{rgb,iuv}/NNNNNN.png``, ``clip.npz``, ``meta.json``), its validator and writer.
* :mod:`training.video`: DensePose-processed real videos (detectron2 IUV files).
* :mod:`training.datasets`: consecutive-frame pairs for the BTU-Net, frames for SR3.
* :mod:`training.config` / :mod:`training.trainer`: ``TrainConfig`` and the resumable,
  DDP-capable training loop behind ``btdm train``.
* :mod:`training.toy_data`: a small procedural dataset in the real layout (tests, smoke runs).
* :mod:`training.command`: ``btdm train`` (the application layer: ``btdm_engine.cli`` registers it by
  name; the engine never imports this package).

Imports are lazy so that ``import training.dataset_format`` stays light (no torch).
"""

from __future__ import annotations
