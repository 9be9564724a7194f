"""ecnreid: unsupervised domain-adaptive person re-identification (ECN, CamStyle, DG modules)."""

__version__ = "0.1.0"
