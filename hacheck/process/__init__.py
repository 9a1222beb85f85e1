"""The process life: the entry point, the flags, the -n supervisor and its workers, systemd, reload."""
