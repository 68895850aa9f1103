"""Generation with open-weight language models. Imports torch and transformers: load it
only in an executor process."""

from sparegrid.worker.executors.generate.executor import GenerateExecutor

__all__ = ["GenerateExecutor"]
