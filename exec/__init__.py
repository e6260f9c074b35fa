"""The corosync executive: Totem, transports, crypto, IPC server, sync and config."""
