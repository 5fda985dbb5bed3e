"""Datasets: loaders to one interaction table, sample building and period splits."""

from asmg.data.log import DataError, InteractionLog

__all__ = ["DataError", "InteractionLog"]
