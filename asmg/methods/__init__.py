"""Update methods behind one interface: given period t's data, return the model that serves t+1."""

from asmg.methods.base import UpdateMethod
from asmg.methods.registry import METHOD_HELP, make_method, parse_methods

__all__ = ["METHOD_HELP", "UpdateMethod", "make_method", "parse_methods"]
