"""Evaluation metrics: FID, KID and Inception Score on top of clean-fid and torchmetrics."""
