"""BTDM pre-vis engine: body model, motion clips, IUV pose maps and the BTDM generator."""

__version__ = "0.1.0"
