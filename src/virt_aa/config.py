"""``etc/virt-aa/config.toml``: the few host-wide settings (stdlib tomllib).

    # what a VM start does when a stored per-VM rule no longer compiles:
    # "refuse" the start (default), or start with the "stock" profile, i.e.
    # without any per-VM rules -- never a wider one.
    on_broken_rules = "refuse"
"""

from __future__ import annotations

from .store import Store, StoreError

ON_BROKEN = ("refuse", "stock")


class Config:
    __slots__ = ("on_broken_rules",)

    def __init__(self, on_broken_rules: str = "refuse") -> None:
        self.on_broken_rules = on_broken_rules


def load(store: Store) -> Config:
    import tomllib

    from .fsutil import read_text

    path = store.config_path()
    text = read_text(path)
    if text is None:
        return Config()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StoreError(f"{path}: {exc}") from None
    value = data.get("on_broken_rules", "refuse")
    if value not in ON_BROKEN:
        raise StoreError(f"{path}: on_broken_rules must be one of {', '.join(ON_BROKEN)}")
    return Config(on_broken_rules=value)
