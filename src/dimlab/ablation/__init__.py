"""Ablation matrices: a YAML file of DiM switch settings -> named ``dimlab fit`` runs, a results table, a W&B sweep.

``dimlab ablate MATRIX.yaml`` is :mod:`dimlab.commands.ablate`. The modules: ``axes`` (the four paper
switches and their backbone flags), ``matrix`` (load/validate/expand), ``params`` (meta-device parameter counts),
``runner`` (resumable subprocess runs), ``results`` (results.csv / results.md / W&B table), ``sweep`` (W&B grid).
"""

from dimlab.ablation.matrix import AblationMatrix, AblationRow, MatrixError, load_matrix

__all__ = ["AblationMatrix", "AblationRow", "MatrixError", "load_matrix"]
