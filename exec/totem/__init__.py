"""Totem single-ring protocol: wire codec (``wire``), sans-IO state machine (``srp``),
packing layer (``pg``), configuration values (``config``) and the event/action seam
(``events``)."""
