"""Inference on `torch.export` programs. Imports torch: load it only in an executor process."""

from sparegrid.worker.executors.inference.executor import InferenceExecutor

__all__ = ["InferenceExecutor"]
