"""``etc/virt-aa/config.toml``: the few host-wide settings (stdlib tomllib).

    # what a VM start does when a stored per-VM rule no longer compiles:
    # "refuse" the start (default), or start with the "stock" profile, i.e.
    # without any per-VM rules -- never a wider one.
    on_broken_rules = "refuse"
    # a named policy a domain's metadata asks for is missing here or differs:
    # "refuse" the start or incoming migration (default), or "warn" and go on
    # without it
    on_policy_mismatch = "refuse"
    # complain mode asked for by a domain's metadata is honoured only if true
    metadata_complain = false
"""

from __future__ import annotations

from virt_aa.host.store import Store, StoreError

ON_BROKEN = ("refuse", "stock")


class Config:
    __slots__ = ("metadata_complain", "on_broken_rules", "on_policy_mismatch")

    def __init__(self, on_broken_rules: str = "refuse", on_policy_mismatch: str = "refuse",
                 metadata_complain: bool = False) -> None:
        self.on_broken_rules = on_broken_rules
        self.on_policy_mismatch = on_policy_mismatch   # refuse | warn
        self.metadata_complain = metadata_complain     # honour complain asked by metadata


def load(store: Store) -> Config:
    import tomllib

    from virt_aa.host.fsutil import read_text

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
    mismatch = data.get("on_policy_mismatch", "refuse")
    if mismatch not in ("refuse", "warn"):
        raise StoreError(f"{path}: on_policy_mismatch must be refuse or warn")
    complain = data.get("metadata_complain", False)
    if not isinstance(complain, bool):
        raise StoreError(f"{path}: metadata_complain must be true or false")
    return Config(on_broken_rules=value, on_policy_mismatch=mismatch,
                  metadata_complain=complain)
