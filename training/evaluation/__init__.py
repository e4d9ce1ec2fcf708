"""Evaluation: held-out metrics and the operating point, the leave-source-out benchmark,
perturbations (laundering) and the robust-vs-BCE comparison."""
