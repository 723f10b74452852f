"""The operations every front end shares (CLI, hook, Ansible): checked changes, status, fleets."""
