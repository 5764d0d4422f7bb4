"""maskray: mask-conditioned chest radiograph synthesis with ControlNet (Zhang, Rao & Agrawala, ICCV 2023)."""

__version__ = "0.1.0"
