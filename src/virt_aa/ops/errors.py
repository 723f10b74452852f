"""The error every management operation raises: one line for the admin.

Its own module so that commands which never manage a VM (``virt-aa denials``
on a big log) can catch it without importing the whole of `manage`.
"""


class ManageError(RuntimeError):
    """One line for the admin: what failed, what to do; nothing was changed."""
