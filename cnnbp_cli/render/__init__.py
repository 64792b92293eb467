"""Terminal rendering shared by the commands: consoles, tables, progress, pictures of arrays."""
